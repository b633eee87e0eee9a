"""MPtrj as a statistics-only ood-shift reference and the ood-shift-mptrj task on real dimer points (issue #15)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ase import Atoms
from ase.constraints import FixAtoms

from mlip_zoo.evaluators.record import ResultRecord
from mlip_zoo.errors import ConfigError
from mlip_zoo.evaluators.base import evaluator_for, load_task_config
from mlip_zoo.evaluators.data import datasets_dir, iter_records, resolve_dataset
from mlip_zoo.evaluators.result import flatten_metrics
from mlip_zoo.evaluators.shift import make_diatomics_points
from mlip_zoo.evaluators.shift.ood import reference_dataset
from mlip_zoo.evaluators.shift.stats import AXES, UNAVAILABLE, StatisticsReference, mptrj_stats
from mlip_zoo.zoo.card import get_card

REASON = "no training structures: MPtrj is shipped as statistics only"


def toy(**update) -> StatisticsReference:
    """Hand-sized statistics: O common, He rare (below 1e-4), Po absent; tail from 2 eV/Å, 10 % in it."""
    fields = dict(name="toy", files={}, rare_fraction=1e-4, element_fraction={"O": 0.99995, "He": 0.00005},
                  force_edge=2.0, force_tail_share=0.1, unavailable=dict(UNAVAILABLE))
    return StatisticsReference(**{**fields, **update})


# -- the statistics and the two rules -------------------------------------------------------------


def test_mptrj_statistics_as_the_files_give_them():
    stats = mptrj_stats()
    folder = datasets_dir() / "mptrj-stats"
    by_atom = json.loads((folder / "mp-trj-element-counts-by-composition.json").read_text())
    with gzip.open(folder / "mp-trj-hists.json.gz", "rt") as f:
        forces = json.load(f)["forces"]
    assert len(stats.element_fraction) == 89 and sum(stats.element_fraction.values()) == pytest.approx(1, abs=1e-12)
    assert stats.element_fraction["O"] == pytest.approx(by_atom["O"] / 49_294_238)
    assert stats.rare_fraction == 1e-4
    assert sorted(s for s, f in stats.element_fraction.items() if f < 1e-4) == ["Ac", "Ar", "He", "Kr", "Ne", "Pa"]
    # 300 equal bins from 0; the file rounds the bin starts to 3 decimals (1.754)
    assert stats.force_edge == pytest.approx(526.156 / 300) and round(stats.force_edge, 3) == forces["x"][1] == 1.754
    assert stats.force_tail_share == pytest.approx(1 - 145_886_931 / 147_882_714) == pytest.approx(0.013496, abs=1e-6)
    assert stats.unavailable == {"connectivity": REASON}


def test_element_share_counts_absent_and_rare_atoms():
    stats = toy()
    assert stats.element_shift(Atoms("O2")) == 0.0
    assert stats.element_shift(Atoms("HeO3")) == 0.25  # He below 1e-4 of the atoms: rare
    assert stats.element_shift(Atoms("PoHeO2")) == 0.5  # Po absent
    at_the_line = toy(element_fraction={"O": 0.9999, "He": 1e-4})  # rare means strictly below
    assert at_the_line.element_shift(Atoms("HeO3")) == 0.0
    assert stats.is_ood("element", 0.25) and not stats.is_ood("element", 0.0)  # any foreign atom shifts
    real = mptrj_stats()
    assert real.element_shift(Atoms("Fe2O3")) == 0.0 and real.element_shift(Atoms("KrFe2OPo2")) == 0.5  # Kr rare, Po absent


def test_force_share_counts_free_components_in_the_tail():
    stats = toy()
    forces = np.array([[0.0, 0.0, 2.5], [0.1, -2.0, 0.0], [1.9, 0.0, 0.0]])  # 2.5 and |-2.0| >= 2.0
    atoms = Atoms("O3", positions=np.eye(3) * 2)
    assert stats.scores(atoms, forces)["force_norm"] == pytest.approx(2 / 9)
    atoms.set_constraint(FixAtoms([1]))  # a fixed atom's components do not count
    assert stats.scores(atoms, forces)["force_norm"] == pytest.approx(1 / 6)
    assert stats.force_tail(forces, np.zeros(3, bool)) == 0.0
    assert stats.is_ood("force_norm", 1 / 6) and not stats.is_ood("force_norm", 0.1)  # above the training share
    assert not stats.is_ood("force_norm", 0.0)


def test_connectivity_is_unavailable_with_its_reason():
    scores = toy().scores(Atoms("O2", positions=[[0, 0, 0], [1.2, 0, 0]]), np.zeros((2, 3)))
    assert scores["connectivity"] is None and toy().is_ood("connectivity", None) is None
    assert set(scores) == set(AXES)


# -- metrics with an n/a axis ---------------------------------------------------------------------


def _row(rid, split, df, element, force, n=2):
    ft = np.arange(3 * n, dtype=float).reshape(n, 3) + 1
    return {"id": rid, "split": split, "n_atoms": n, "status": "ok", "reason": None, "seconds": 0.1,
            "energy_true": 1.0, "energy_pred": 1.0, "forces_true": ft.ravel().tolist(),
            "forces_pred": (ft + df).ravel().tolist(), "free": [True] * n,
            "shift_element": float(element), "shift_force_norm": 1 / 3 if force else 0.0, "shift_connectivity": None,
            "ood_element": element, "ood_force_norm": force, "ood_connectivity": None}


def test_metrics_report_the_unavailable_axis_and_count_ood_on_the_others():
    evaluator = evaluator_for("ood-shift-mptrj")
    rows = [_row("a", "s", 0.0, False, False), _row("b", "p", 0.3, True, False), _row("c", "d", 0.6, False, True)]
    table = pa.Table.from_pylist(rows, schema=evaluator.schema)
    m = evaluator.metrics(table)
    assert m["axes"]["connectivity"] == {"status": "n/a", "reason": REASON}
    assert list(m["axes"]) == ["element", "force_norm", "connectivity"]
    assert m["id_n"] == 1 and m["ood_n"] == 2 and m["ood_fraction"] == pytest.approx(2 / 3)
    assert m["ood_forces_mae"] == pytest.approx(0.45) and m["id_forces_mae"] == pytest.approx(0.0, abs=1e-12)
    assert m["axes"]["force_norm"]["ood_fraction"] == pytest.approx(1 / 3)
    assert m["axes"]["force_norm"]["bins"]["bin4"] == {"range": "[0.25, 0.5)", "energy_per_atom_mae": 0.0,
                                                       "forces_mae": pytest.approx(0.6), "forces_cosine": pytest.approx(
                                                           m["axes"]["force_norm"]["ood"]["forces_cosine"]), "n": 1}
    flat = flatten_metrics(m)
    terms = evaluator.metric_terms(table)
    assert not any(k.startswith("axes.connectivity") for k in terms)
    for key, (total, numel) in terms.items():  # the bootstrap's fast path agrees with metrics()
        value = np.sum(total) / np.sum(numel) if np.sum(numel) else None
        assert (value is None and flat[key] is None) or value == pytest.approx(flat[key], rel=1e-12), key
    from mlip_zoo.evaluators.uncertainty import intervals

    ranges, _ = intervals(evaluator, table, m)  # text leaves get no interval
    assert ranges["axes"]["connectivity"] == {"status": None, "reason": None}


def test_a_partly_null_axis_is_refused():
    evaluator = evaluator_for("ood-shift-mptrj")
    rows = [_row("a", "s", 0.0, False, False), {**_row("b", "p", 0.0, False, False), "ood_element": None}]
    with pytest.raises(ValueError, match="ood_element is null on 1 of 2 rows"):
        evaluator.metrics(pa.Table.from_pylist(rows, schema=evaluator.schema))


# -- named references and auto ------------------------------------------------------------------


def _with_reference(task: str, reference):
    config = load_task_config(task)
    return config.model_copy(update={"options": {**config.options, "reference": reference}})


def test_auto_takes_mptrj_for_a_card_naming_it_and_the_shipped_reference_otherwise():
    chgnet, emt = get_card("chgnet-0.3.0"), get_card("emt")
    assert chgnet.training_sets == ["MPtrj"] and not emt.training_sets
    shift = evaluator_for(_with_reference("ood-shift", "auto"))
    assert shift.for_card(chgnet).options["reference"] == "mptrj"
    assert shift.for_card(emt).options["reference"] == load_task_config("ood-shift").options["reference"]
    shouting = chgnet.model_copy(update={"training_sets": ["OMat24", " MPTRJ "]})
    assert shift.for_card(shouting).options["reference"] == "mptrj"
    assert evaluator_for("ood-shift-mptrj").for_card(emt) == load_task_config("ood-shift-mptrj")  # not auto: unchanged
    with pytest.raises(ConfigError, match="resolve it with Evaluator.for_card"):
        shift.work_key()


def test_evaluate_resolves_auto_per_card(tmp_path):
    from mlip_zoo.evaluators.runner import RunOptions, evaluate

    config = _with_reference("ood-shift", "auto")
    emt = get_card("emt")
    record = evaluate(emt, config, RunOptions(out=tmp_path / "a", workers=0, limit=2))
    assert record.provenance.task_inputs["training_stats"]["reference"]["file"] == "train.json"
    assert record.provenance.task_config_sha256 == load_task_config("ood-shift").fingerprint()
    as_mptrj_model = emt.model_copy(update={"training_sets": ["MPtrj"]})
    record = evaluate(as_mptrj_model, config, RunOptions(out=tmp_path / "b", workers=0, limit=2))
    assert record.provenance.task_inputs["training_stats"]["name"] == "mptrj"
    assert record.provenance.task_config_sha256 == _with_reference("ood-shift", "mptrj").fingerprint()
    assert record.metrics["axes"]["connectivity"] == {"status": "n/a", "reason": REASON}


def test_a_named_reference_is_not_a_set_of_structures():
    with pytest.raises(ConfigError, match="names no training structures"):
        reference_dataset("mptrj")


# -- the dataset and the task end to end ----------------------------------------------------------


def test_diatomics_points_follow_the_pbe_curves():
    dataset = resolve_dataset("diatomics-points", "points.extxyz")  # checks the manifest's sha256
    assert dataset.labelled_by is None and dataset.n == 336  # VASP labels, not a model's
    manifest = json.loads((dataset.path.parent / "manifest.json").read_text())
    assert manifest["source"]["license"] == "MIT" and "labelled_by" not in manifest
    from mlip_zoo.evaluators.diatomics.data import iter_diatomics

    curves = {a.info["element"]: a.info["reference"]["PBE"]
              for a in iter_diatomics(resolve_dataset("diatomics-vasp", "diatomics-dft.json.gz").path)}
    records = list(iter_records(dataset.path))
    assert len(records) == 336 and {a.info["split"] for a in records} == {"s", "p", "d", "f"}
    for atoms in records:
        element = atoms.get_chemical_symbols()[0]
        curve = curves[element]
        i = curve["distances"].index(atoms.info["distance"])
        assert atoms.get_distance(0, 1) == pytest.approx(curve["distances"][i], abs=1e-8)
        assert atoms.get_potential_energy() == curve["energies"][i]
        assert atoms.get_forces().tolist() == curve["forces"][i]
        assert atoms.cell.lengths().tolist() == [50.0] * 3 and atoms.pbc.all()
    minimum = {a.get_chemical_symbols()[0]: a for a in records if a.info["point"] == "minimum"}
    assert minimum["N"].info["distance"] == pytest.approx(1.11, abs=0.01)
    assert "Gd" in minimum and "Tb" not in minimum  # Tb's PBE curve changes SCF branch: left out


def test_generator_regenerates_byte_identically(tmp_path):
    make_diatomics_points.generate(tmp_path)
    shipped = datasets_dir() / "diatomics-points"
    for name in ("points.extxyz", "manifest.json"):
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name


def test_cli_eval_emt_names_failures_and_reproduces(tmp_path):
    from typer.testing import CliRunner

    from mlip_zoo.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["eval", "emt", "ood-shift-mptrj", "--workers", "0", "--out", str(out),
                                      "--wandb", "disabled", "--json"])
    assert result.exit_code == 0, result.output
    record = ResultRecord.model_validate_json(result.stdout)  # --json prints the record
    emt_dimers = 11  # EMT's H, C, N, O, Al, Ni, Cu, Pd, Ag, Pt, Au
    assert record.n_structures == 336 and record.n_failed == 336 - 4 * emt_dimers
    assert all("which emt was not trained on" in f.reason for f in record.failures)
    assert {f.id for f in record.failures} >= {"He2-minimum", "Fe2-wall-5eV"}
    m = record.metrics
    assert m["n"] == 44 and m["axes"]["connectivity"] == {"status": "n/a", "reason": REASON}
    assert m["axes"]["element"]["ood"]["n"] == 0  # EMT's elements are all common in MPtrj
    assert record.provenance.task_inputs["training_stats"]["name"] == "mptrj"
    path = out / "emt" / "ood-shift-mptrj.json"
    again = CliRunner().invoke(app, ["reproduce", str(path)])
    assert again.exit_code == 0 and "every metric and interval recomputes" in again.output, again.output
    from mlip_zoo.leaderboard.site import build_site

    build_site(out, tmp_path / "site")  # the n/a axis has no bins to plot
    page = (tmp_path / "site" / "tasks" / "ood-shift-mptrj.html").read_text()
    shift = json.loads(page.split('id="plot-data">')[1].split("</script>")[0])["models"]["emt"]["shift"]
    assert set(shift) == {"element", "force_norm"}


@pytest.mark.slow
def test_chgnet_on_the_dimer_points(tmp_path):
    import torch

    from mlip_zoo.evaluators.runner import RunOptions, evaluate
    from mlip_zoo.leaderboard.results import recompute

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny graphs: more threads only contend
    try:
        record = evaluate("chgnet-0.3.0", "ood-shift-mptrj", RunOptions(out=tmp_path, workers=0))
    finally:
        torch.set_num_threads(threads)
    m = record.metrics
    assert record.n_failed == 0 and m["n"] == 336  # CHGNet embeds Z = 1..94
    rows = pq.read_table(tmp_path / "chgnet-0.3.0" / "ood-shift-mptrj.parquet").to_pylist()
    foreign = {r["id"].split("2-")[0] for r in rows if r["ood_element"]}
    assert foreign == {"He", "Ne", "Ar", "Kr", "Ac", "Pa", "Po", "At", "Rn", "Fr", "Ra"}
    assert all(r["ood_force_norm"] for r in rows if r["id"].endswith("wall-5eV"))
    assert m["id_forces_mae"] < 0.5 < m["ood_forces_mae"]  # measured 0.25 and 14.9 (Gd2 on the wall: ~5000 eV/Å)
    assert recompute(tmp_path / "chgnet-0.3.0" / "ood-shift-mptrj.json").ok
