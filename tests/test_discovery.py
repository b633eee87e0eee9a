"""Matbench Discovery tasks: WBM-layout reading, metrics equal to matbench-discovery's, the mini set's
EMT self-consistency, MP2020 corrections on a hand-made sample in the real layout, and a real model."""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from ase import Atoms
from ase.build import bulk
from ase.io import write
from mlip_zoo.evaluators.data import iter_records, resolve_dataset
from mlip_zoo.evaluators.discovery import metrics as m
from mlip_zoo.evaluators.discovery.wbm import WBM_FILES, WbmLayout, fetch
from mlip_zoo.evaluators.runner import RunOptions, evaluate

from mlip_zoo.errors import DatasetError

from labels import assert_reproduces_labels

# ---- metrics equal the reference implementation ------------------------------------------------

def test_subset_metrics_equal_matbench_discovery_1_3_1_where_the_definitions_agree():
    """1.3.1's stable_metrics on each subset gives every number but two: Accuracy, which 1.3.1 divides by
    the non-NaN count (the latest reference divides by every row, a NaN being "predicted unstable"), and
    the DAF of the unique-prototype and most-stable subsets, whose denominator is the prevalence of the
    unique prototypes (matbench-discovery's calc_discovery_metrics), not the subset's own."""
    from matbench_discovery.metrics import stable_metrics

    rng = np.random.default_rng(1)
    n = 400
    each_true = rng.normal(0.05, 0.1, n)
    e_form_dft = rng.normal(-0.3, 0.2, n)
    e_form_pred = e_form_dft + rng.normal(0, 0.05, n)
    e_form_pred[rng.choice(n, 7, replace=False)] = np.nan  # failed relaxations
    unique = rng.random(n) < 0.7
    ours = m.discovery_metrics(each_true, e_form_pred, e_form_dft, unique, most_stable_n=50)

    each_pred = each_true + e_form_pred - e_form_dft
    most_stable = np.zeros(n, bool)
    uniq = np.flatnonzero(unique)
    most_stable[uniq[np.argsort(np.nan_to_num(each_pred[uniq], nan=np.inf), kind="stable")[:50]]] = True
    uniq_prevalence = np.mean(each_true[unique] <= 0)
    for name, mask in {"full_test_set": np.ones(n, bool), "unique_prototypes": unique,
                       "most_stable": most_stable}.items():
        reference = stable_metrics(each_true[mask], each_pred[mask], fillna=True)
        assert ours[name]["n"] == mask.sum()
        for key, value in reference.items():
            if key in ("TP", "FP", "TN", "FN"):
                assert ours[name][key] == value, (name, key)
            elif key not in ("Accuracy", "DAF"):
                assert ours[name][key] == pytest.approx(float(value), rel=1e-12, abs=0), (name, key)
        tp, tn = reference["TP"], reference["TN"]
        assert ours[name]["Accuracy"] == pytest.approx((tp + tn) / mask.sum(), rel=1e-15)
        if np.isnan(each_pred[mask]).any():  # 1.3.1 left the failed ones out of the count
            assert ours[name]["Accuracy"] < reference["Accuracy"], name
        else:  # the most stable ones: failures rank last, none is among them
            assert ours[name]["Accuracy"] == pytest.approx(reference["Accuracy"], rel=1e-15), name
        prevalence = np.mean(each_true[mask] <= 0) if name == "full_test_set" else uniq_prevalence
        assert ours[name]["DAF"] == pytest.approx(reference["Precision"] / prevalence, rel=1e-12), name


def test_most_stable_subset_is_the_head_of_a_stable_sort_with_ties_and_nans():
    """The linear-time selection (a partition, then the boundary's ties in row order) picks what a
    stable sort with NaN last picks, for every size: ties at the boundary, NaN rows among the
    chosen when fewer values are defined, repeated values everywhere."""
    rng = np.random.default_rng(3)
    values = rng.integers(0, 6, 300).astype(float)  # many ties
    values[rng.choice(300, 40, replace=False)] = np.nan
    unique = rng.random(300) < 0.6
    uniq = np.flatnonzero(unique)
    order = uniq[np.argsort(np.nan_to_num(values[uniq], nan=np.inf), kind="stable")]
    for k in (0, 1, 5, 17, 50, uniq.size - 20, uniq.size - 1, uniq.size, uniq.size + 3):
        want = np.zeros(300, bool)
        want[order[:k]] = True
        got = m.subsets(values, unique, k)["most_stable"]
        assert (got == want).all(), k


def test_daf_of_the_most_stable_subset_divides_by_the_unique_prototypes_prevalence():
    """Four unique prototypes, two stable (prevalence 0.5); a perfect model's two most stable are both
    stable: precision 1, DAF 1 / 0.5 = 2 (dividing by the subset's own prevalence, 1, gave 1)."""
    each_true = np.array([-0.1, -0.05, 0.1, 0.2])
    out = m.discovery_metrics(each_true, np.zeros(4), np.zeros(4), np.ones(4, bool), most_stable_n=2)
    assert out["most_stable"]["n"] == 2 and out["most_stable"]["Precision"] == 1.0
    assert out["most_stable"]["DAF"] == 2.0
    assert out["unique_prototypes"]["DAF"] == 2.0 and out["full_test_set"]["DAF"] == 2.0


def test_accuracy_counts_a_failed_prediction_as_predicted_unstable_over_every_row():
    """TP = 1, TN = 2 (one of them a failed prediction of an unstable material), FN = 1 (a failed
    prediction of a stable one): Accuracy 3/4. matbench-discovery 1.3.1 divided by the 2 non-NaN
    rows, 3/2 > 1; the latest reference fixed it."""
    from matbench_discovery.metrics import stable_metrics as stable_metrics_1_3_1

    each_true = np.array([-0.1, 0.1, 0.2, -0.3])
    each_pred = np.array([-0.1, 0.1, np.nan, np.nan])
    out = m.stable_metrics(each_true, each_pred)
    assert (out["TP"], out["FP"], out["TN"], out["FN"]) == (1, 0, 2, 1)
    assert out["Accuracy"] == 0.75
    assert stable_metrics_1_3_1(each_true, each_pred)["Accuracy"] == 1.5
    assert out["MAE"] == 0.0 and out["R2"] == 1.0  # regression metrics drop the NaN rows


def test_a_subset_with_stable_materials_only():
    """All stable; predictions -0.1 (TP), 0.1 (FN) and NaN (FN). Precision 1, Recall 1/3, F1 = 2 (1/3) / (4/3)
    = 1/2, DAF = 1 / 1, Accuracy 1/3 over every row, FPR and TNR undefined, and R2 on the two defined
    rows: 1 - 0.09 / 0.005 = -17 (it was None)."""
    each_true = np.array([-0.1, -0.2, -0.05])  # e_form_dft = each_true: each_pred is the model's e_form
    out = m.discovery_metrics(each_true, [-0.1, 0.1, np.nan], each_true, np.ones(3, bool), 10)["full_test_set"]
    assert (out["TP"], out["FP"], out["TN"], out["FN"]) == (1, 0, 0, 2)
    assert out["Precision"] == 1.0 and out["Recall"] == pytest.approx(1 / 3, rel=1e-15)
    assert out["F1"] == pytest.approx(0.5, rel=1e-15) and out["DAF"] == 1.0
    assert out["Accuracy"] == pytest.approx(1 / 3, rel=1e-15)
    assert out["FPR"] is None and out["TNR"] is None and out["FNR"] == pytest.approx(2 / 3, rel=1e-15)
    assert out["MAE"] == pytest.approx(0.15, rel=1e-12) and out["RMSE"] == pytest.approx(0.045 ** 0.5, rel=1e-12)
    assert out["R2"] == pytest.approx(-17.0, rel=1e-12)


def test_a_negative_bias_moves_f1_and_daf_as_an_independent_count_predicts():
    """A model that puts every material 0.03 eV/atom lower on the hull: count the confusion matrix by
    hand and check F1 and DAF against it, and that they moved the predicted way."""
    rng = np.random.default_rng(2)
    each_true = rng.normal(0.02, 0.06, 300)
    e_form_dft = rng.normal(-0.2, 0.1, 300)
    unique = np.ones(300, bool)
    bias = -0.03
    perfect = m.discovery_metrics(each_true, e_form_dft, e_form_dft, unique, 10_000)["full_test_set"]
    biased = m.discovery_metrics(each_true, e_form_dft + bias, e_form_dft, unique, 10_000)["full_test_set"]

    stable = each_true <= 0
    called = each_true + bias <= 0
    tp, fp, fn = np.sum(stable & called), np.sum(~stable & called), np.sum(stable & ~called)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert fn == 0 and fp > 0  # lowering the hull never loses a stable material, only adds false alarms
    assert biased["F1"] == pytest.approx(2 * precision * recall / (precision + recall), abs=1e-15)
    assert biased["DAF"] == pytest.approx(precision / stable.mean(), abs=1e-12)
    assert perfect["F1"] == 1.0 and biased["F1"] < 1.0 and biased["DAF"] < perfect["DAF"]
    assert biased["MAE"] == pytest.approx(abs(bias), abs=1e-12)


def test_a_subset_without_stable_materials_gets_defined_counts_not_an_exception():
    """No stable material (1.3.1 raised on its sanity check): counts, Accuracy, precision, MAE and R2 are
    defined; F1 is NaN without a true positive and the recall-based ratios and DAF (prevalence 0) are undefined,
    as in the latest matbench-discovery."""
    each_true = np.array([0.1, 0.2, 0.05, 0.3])
    e_form_dft = np.zeros(4)
    e_form_pred = np.array([-0.2, 0.0, 0.0, 0.0])  # the first one predicted stable: a false positive
    out = m.discovery_metrics(each_true, e_form_pred, e_form_dft, np.ones(4, bool), 10)["full_test_set"]
    assert (out["TP"], out["FP"], out["TN"], out["FN"]) == (0, 1, 3, 0)
    assert out["Precision"] == 0.0 and out["Accuracy"] == 0.75
    assert out["FPR"] == 0.25 and out["TNR"] == 0.75
    assert out["Recall"] is None and out["F1"] is None and out["DAF"] is None and out["FNR"] is None
    assert out["MAE"] == pytest.approx(0.05)
    # errors (0.2, 0, 0, 0) against a spread of 0.036875 around the mean 0.1625
    assert out["R2"] == pytest.approx(1 - 0.04 / 0.036875, rel=1e-12)


def test_f1_is_undefined_without_a_true_positive_even_with_both_classes():
    """Stable and unstable materials, none found: precision 0 and recall 0, so F1 = 0 / 0 is NaN (None),
    as in the reference (it was 0.0 here)."""
    out = m.stable_metrics(np.array([-0.1, 0.1]), np.array([0.1, -0.1]))
    assert (out["TP"], out["FP"], out["TN"], out["FN"]) == (0, 1, 0, 1)
    assert out["Precision"] == 0.0 and out["Recall"] == 0.0 and np.isnan(out["F1"])
    assert out["DAF"] == 0.0 and out["Accuracy"] == 0.0


def test_geo_opt_metrics_follow_matbench_discovery_definitions():
    out = m.geo_opt_metrics(
        [0.0, 0.1, np.nan, np.nan], [False, False, False, True],
        {"1e-2": np.array([225, 221, 12, np.nan])}, {"1e-2": np.array([225, 225, 12, 194])},
        {"1e-2": np.array([48, 48, 8, np.nan])}, {"1e-2": np.array([48, 48, 4, 24])})
    assert out["rmsd"] == pytest.approx((0.0 + 0.1 + 1.0) / 3)  # no match -> 1 Å; the failed one has no row
    assert out["rmsd_failed_as_1A"] == pytest.approx((0.0 + 0.1 + 1.0 + 1.0) / 4)
    assert out["n"] == 4 and out["n_failed"] == 1
    sym = out["symprec=1e-2"]
    assert sym["n"] == 3  # the failed relaxation is not analysed
    assert sym["symmetry_match"] == pytest.approx(2 / 3)  # 225 == 225 and 12 == 12
    assert sym["symmetry_decrease"] == 0.0 and sym["symmetry_increase"] == 0.0  # 221 vs 225: same n_ops
    assert sym["n_sym_ops_mae"] == pytest.approx(4 / 3)


def test_geo_opt_rmsd_leaves_failed_relaxations_out_as_matbench_discovery_does():
    """Two structures, one relaxed to 0.1 Å, one failed: matbench-discovery's mean is 0.1 (the failed one
    has no row); the penalised variant counts it as 1 Å: 0.55."""
    nan = {"1e-2": np.array([np.nan, np.nan])}
    out = m.geo_opt_metrics([0.1, np.nan], [False, True], nan, nan, nan, nan)
    assert out["rmsd"] == pytest.approx(0.1, rel=1e-15)
    assert out["rmsd_failed_as_1A"] == pytest.approx(0.55, rel=1e-15)
    assert m.geo_opt_metrics([np.nan], [True], nan, nan, nan, nan)["rmsd"] is None  # nothing relaxed
    from mlip_zoo.evaluators.base import load_task_config

    assert load_task_config("geo-opt").metrics["rmsd_failed_as_1A"].description


def test_geo_opt_task_reads_the_predictions_table_column_wise():
    """The task's metrics from rows: one relaxed structure (0.1 Å, same space group at 1e-2, lower at 1e-5)
    and one failed relaxation (no geometry columns)."""
    import pyarrow as pa

    from mlip_zoo.evaluators.base import evaluator_for
    from mlip_zoo.evaluators.discovery.tasks import GeoOpt

    rows = [{"id": "a", "status": "ok", "rmsd": 0.1, "spg_pred": [225, 221], "spg_ref": [225, 225],
             "n_ops_pred": [48, 24], "n_ops_ref": [48, 48]},
            {"id": "b", "status": "failed", "reason": "RuntimeError: boom"}]
    out = evaluator_for("geo-opt").metrics(pa.Table.from_pylist(rows, schema=GeoOpt.schema))
    assert out["rmsd"] == pytest.approx(0.1, rel=1e-15) and out["rmsd_failed_as_1A"] == pytest.approx(0.55)
    assert out["n"] == 2 and out["n_failed"] == 1
    assert out["symprec=1e-2"] == {"symmetry_match": 1.0, "symmetry_decrease": 0.0, "symmetry_increase": 0.0,
                                   "n_sym_ops_mae": 0.0, "n": 1}
    assert out["symprec=1e-5"] == {"symmetry_match": 0.0, "symmetry_decrease": 1.0, "symmetry_increase": 0.0,
                                   "n_sym_ops_mae": 24.0, "n": 1}


def test_rmsd_of_a_structure_with_itself_is_zero_and_symmetry_is_read():
    cu3au = bulk("Cu", "fcc", a=3.7, cubic=True)
    cu3au[0].symbol = "Au"
    assert m.structure_rmsd(cu3au, cu3au.copy()) == pytest.approx(0, abs=1e-10)
    assert m.symmetry(cu3au, 1e-5) == (221, 48)


# ---- the embedded mini set ------------------------------------------------------------------------

def test_discovery_mini_is_in_the_wbm_layout_and_labelled_as_ours():
    dataset = resolve_dataset("discovery-mini", "wbm-initial-atoms.extxyz.zip")
    assert dataset.name == "discovery-mini (EMT labels)"
    layout = WbmLayout.find(dataset.path)
    assert layout.labels == "EMT"
    assert {"wbm_initial_atoms", "wbm_relaxed_atoms", "wbm_summary", "mp_elemental_ref_entries",
            "mp_computed_structure_entries"} <= set(layout.files)
    with gzip.open(layout.files["wbm_summary"], "rt") as f:
        rows = list(csv.DictReader(f))
    assert 150 <= len(rows) <= 400
    each = np.array([float(r["e_above_hull_mp2020_corrected_ppd_mp"]) for r in rows])
    assert 0.1 < (each <= 0).mean() < 0.9  # both classes present, so F1/DAF mean something
    unique = [r["unique_prototype"] == "True" for r in rows]
    assert 0 < sum(unique) < len(rows)
    first = next(iter_records(dataset.path))
    assert {"wbm", "e_refs", "dft_relaxed", "labels"} <= set(first.info)


def test_the_hull_distances_are_those_of_the_mp_like_entries():
    """each_true is the distance to the hull of the shipped MP-like entries (pymatgen PhaseDiagram)."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    layout = WbmLayout.find(resolve_dataset("discovery-mini", "wbm-initial-atoms.extxyz.zip").path)
    with gzip.open(layout.files["mp_computed_structure_entries"], "rt") as f:
        entries = [ComputedStructureEntry.from_dict(d) for d in json.load(f)]
    hull = PhaseDiagram([PDEntry(e.composition, e.energy) for e in entries])
    with gzip.open(layout.files["wbm_summary"], "rt") as f:
        rows = list(csv.DictReader(f))
    for row in rows[::5]:
        entry = PDEntry(Composition(row["formula"]), float(row["uncorrected_energy"]))
        each = hull.get_decomp_and_e_above_hull(entry, allow_negative=True)[1]
        assert each == pytest.approx(float(row["e_above_hull_mp2020_corrected_ppd_mp"]), abs=1e-12)


@pytest.mark.slow
@pytest.mark.labels
def test_emt_scores_perfectly_on_discovery_mini(tmp_path):
    """EMT labelled the set with the task's own protocol: F1 = 1, MAE = 0, RMSD = 0, symmetry kept."""
    opts = RunOptions(out=tmp_path, workers=2)
    discovery = evaluate("emt", "discovery", opts)
    metrics = discovery.metrics
    assert discovery.n_failed == 0
    assert_reproduces_labels(discovery)
    for subset in ("full_test_set", "unique_prototypes", "most_stable"):
        assert metrics["subsets"][subset]["F1"] == 1.0
        assert metrics["subsets"][subset]["MAE"] < 1e-6
    assert metrics["F1"] == 1.0 and metrics["Precision"] == 1.0 and metrics["Recall"] == 1.0
    assert metrics["DAF"] == pytest.approx(1 / metrics["subsets"]["unique_prototypes"]["TP"]
                                           * metrics["subsets"]["unique_prototypes"]["n"])
    geo = evaluate("emt", "geo-opt", opts)  # same relaxations: no second run
    assert_reproduces_labels(geo)
    for label in ("symprec=1e-2", "symprec=1e-5"):
        assert geo.metrics[label]["symmetry_match"] == 1.0
    shards = list((tmp_path / "emt" / ".shards").iterdir())
    assert len(shards) == 1, "discovery and geo-opt must share one set of relaxations"


# ---- a hand-made sample in the real WBM layout, with MP2020 corrections ---------------------------

def _zip(path: Path, members: dict[str, Atoms]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for mat_id, atoms in members.items():
            text = io.StringIO()
            atoms = atoms.copy()
            atoms.info["material_id"] = mat_id
            write(text, atoms, format="extxyz")
            archive.writestr(f"{mat_id}.extxyz", text.getvalue())


def _gz(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.write(text)


REAL_COLUMNS = ("material_id", "formula", "n_sites", "volume", "uncorrected_energy", "e_form_per_atom_wbm",
                "e_above_hull_wbm", "bandgap_pbe", "wyckoff_spglib_initial_structure", "uncorrected_energy_from_cse",
                "e_correction_per_atom_mp2020", "e_correction_per_atom_mp_legacy", "e_form_per_atom_uncorrected",
                "e_form_per_atom_mp2020_corrected", "e_above_hull_mp2020_corrected_ppd_mp",
                "site_stats_fingerprint_init_final_norm_diff", "wyckoff_spglib", "unique_prototype")


def make_real_layout_sample(root: Path) -> dict[str, Atoms]:
    """Four materials in matbench-discovery's data/ layout: file names, columns, CSE JSON Lines."""
    from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry
    from pymatgen.io.ase import AseAtomsAdaptor

    structures = {
        "wbm-1-1": bulk("NiO", "rocksalt", a=4.17),
        "wbm-1-2": bulk("Cu", "fcc", a=3.61) * (1, 1, 2),
        "wbm-2-7": bulk("CuNi", "cesiumchloride", a=2.83),
        "wbm-3-4": bulk("Cu2O", "fluorite", a=4.6),
    }
    structures["wbm-1-2"][0].symbol = "Ni"
    files = {key: root / spec.path for key, spec in WBM_FILES.items()}
    _zip(files["wbm_initial_atoms"], structures)
    _zip(files["wbm_relaxed_atoms"], structures)
    potcars = {"Ni": "PAW_PBE Ni_pv 06Sep2000", "Cu": "PAW_PBE Cu_pv 06Sep2000", "O": "PAW_PBE O 08Apr2002"}
    lines, rows = [], []
    for i, (mat_id, atoms) in enumerate(structures.items()):
        elements = sorted(set(atoms.get_chemical_symbols()))
        plus_u = "O" in elements and "Ni" in elements
        params = {"run_type": "GGA+U" if plus_u else "GGA", "is_hubbard": plus_u,
                  "hubbards": {"Ni": 6.2, "O": 0.0} if plus_u else {},
                  "potcar_spec": [{"titel": potcars[el], "hash": None} for el in elements]}
        cse = ComputedStructureEntry(AseAtomsAdaptor.get_structure(atoms), -5.0 * len(atoms), parameters=params,
                                     entry_id=mat_id)
        lines.append(json.dumps({"material_id": mat_id, "computed_structure_entry": cse.as_dict()}))
        rows.append({c: "" for c in REAL_COLUMNS} | {
            "material_id": mat_id, "formula": atoms.get_chemical_formula(), "n_sites": len(atoms),
            "e_form_per_atom_mp2020_corrected": -0.1 * i, "e_above_hull_mp2020_corrected_ppd_mp": 0.05 * (i - 1),
            "unique_prototype": i != 1})
    _gz(files["wbm_computed_structure_entries"], "\n".join(lines) + "\n")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=REAL_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    _gz(files["wbm_summary"], text.getvalue())
    refs = {el: ComputedEntry(el, e, entry_id=f"mp-{el}").as_dict()
            for el, e in {"Ni": -5.7799, "Cu": -4.0993, "O": -4.9480}.items()}
    _gz(files["mp_elemental_ref_entries"], json.dumps(refs))
    return structures


def test_a_real_layout_sample_parses_and_evaluates_with_mp2020_corrections(tmp_path):
    structures = make_real_layout_sample(tmp_path / "data")
    records = list(iter_records(tmp_path / "data"))
    assert [a.info["material_id"] for a in records] == list(structures)
    assert all(a.info["labels"] == "DFT" and "cse_parameters" in a.info for a in records)
    assert records[0].info["e_refs"] == {"Ni": -5.7799, "O": -4.948}

    result = evaluate("emt", "discovery", RunOptions(out=tmp_path / "out", workers=0,
                                                     dataset=str(tmp_path / "data")))
    assert result.dataset.name == "data"
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "emt" / result.predictions)
            .to_pylist()}
    assert all(r["corrections"] == "mp2020" for r in rows.values())

    # Expected corrections, read straight from pymatgen's MP2020 parameter file (not its code path).
    import pymatgen.core

    (config,) = Path(pymatgen.core.__file__).parents[1].rglob("MP2020Compatibility.yaml")
    params = yaml.safe_load(config.read_text())
    corr = params["Corrections"]
    nio, cu2o = rows["wbm-1-1"], rows["wbm-3-4"]
    assert nio["status"] == "ok" and cu2o["status"] == "ok"
    # NiO under GGA+U: one oxide O and the Ni U-mixing correction; Cu has no U, so Cu2O gets the oxide one.
    assert nio["energy_corrected"] - nio["energy"] == pytest.approx(
        corr["CompositionCorrections"]["oxide"] + corr["GGAUMixingCorrections"]["O"]["Ni"], abs=1e-9)
    n_oxygen = structures["wbm-3-4"].get_chemical_symbols().count("O")
    assert cu2o["energy_corrected"] - cu2o["energy"] == pytest.approx(
        n_oxygen * corr["CompositionCorrections"]["oxide"], abs=1e-9)
    metal = rows["wbm-2-7"]
    assert metal["status"] == "ok" and metal["energy_corrected"] == metal["energy"]  # GGA metal: no correction
    assert metal["e_form_pred"] == pytest.approx((metal["energy"] - (-5.7799 - 4.0993)) / 2, abs=1e-12)
    assert set(result.metrics["subsets"]) == {"full_test_set", "unique_prototypes", "most_stable"}


@pytest.mark.catalogue
def test_missing_summary_names_the_file_and_the_fix(tmp_path):
    make_real_layout_sample(tmp_path / "data")
    (tmp_path / "data" / WBM_FILES["wbm_summary"].path).unlink()
    with pytest.raises(DatasetError, match="wbm_summary.*mlipzoo data fetch wbm"):
        list(iter_records(tmp_path / "data"))


@pytest.mark.catalogue
def test_summary_without_a_metric_column_names_it(tmp_path):
    make_real_layout_sample(tmp_path / "data")
    path = tmp_path / "data" / WBM_FILES["wbm_summary"].path
    with gzip.open(path, "rt") as f:
        text = f.read().replace("e_above_hull_mp2020_corrected_ppd_mp", "e_above_hull")
    _gz(path, text)
    with pytest.raises(DatasetError, match="lacks column.*e_above_hull_mp2020_corrected_ppd_mp"):
        list(iter_records(tmp_path / "data"))


@pytest.mark.catalogue
def test_structure_without_a_summary_row_is_named(tmp_path):
    structures = make_real_layout_sample(tmp_path / "data")
    _zip(tmp_path / "data" / WBM_FILES["wbm_initial_atoms"].path, {**structures, "wbm-9-9": bulk("Cu")})
    with pytest.raises(DatasetError, match="no row for 'wbm-9-9'"):
        list(iter_records(tmp_path / "data"))


@pytest.mark.catalogue
def test_corrupt_member_of_the_atoms_zip_is_named(tmp_path):
    make_real_layout_sample(tmp_path / "data")
    path = tmp_path / "data" / WBM_FILES["wbm_initial_atoms"].path
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("wbm-0-0.extxyz", "2\nnot a header\nCu 0 0\n")
    with pytest.raises(DatasetError, match="member wbm-0-0.extxyz is not valid extxyz"):
        list(iter_records(tmp_path / "data"))


def test_fetch_checks_the_published_md5_against_a_loopback_mirror(tmp_path):
    import http.server
    import threading

    served = tmp_path / "served"
    make_real_layout_sample(served)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        mirror = f"http://127.0.0.1:{server.server_port}"
        with pytest.raises(DatasetError, match="md5 .* differs from the published"):
            fetch(tmp_path / "dest", ["wbm_summary"], mirror=mirror)  # our sample is not the real file
        assert not (tmp_path / "dest" / WBM_FILES["wbm_summary"].path).exists()
        with pytest.raises(DatasetError, match="cannot download"):
            fetch(tmp_path / "dest", ["wbm_summary"], mirror="http://127.0.0.1:9", timeout=2)
    finally:
        server.shutdown()


# ---- a real model -----------------------------------------------------------------------------

@pytest.mark.slow
def test_sevennet_relaxations_match_ase_fire_frechet_loop(tmp_path):
    """The harness's relaxations are ASE's: same FIRE + FrechetCellFilter answer to < 1 meV/atom."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from mlip_zoo.zoo import load_potential

    n = 6
    result = evaluate("sevennet-0", "discovery", RunOptions(out=tmp_path, workers=2, limit=n))
    assert result.n_structures == n and result.n_failed == 0
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "sevennet-0" / result.predictions)
            .to_pylist()}
    potential = load_potential("sevennet-0")
    dataset = resolve_dataset("discovery-mini", "wbm-initial-atoms.extxyz.zip")
    for i, atoms in enumerate(iter_records(dataset.path)):
        if i >= 3:
            break
        work = atoms.copy()
        work.calc = potential.as_calculator()
        FIRE(FrechetCellFilter(work), logfile=None).run(fmax=0.05, steps=500)
        row = rows[atoms.info["material_id"]]
        assert abs(work.get_potential_energy() - row["energy"]) / len(work) < 1e-3
