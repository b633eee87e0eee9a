"""Energies compared like with like, and the per-element alignment (evaluators/oc20/alignment.py).

Fixtures are small extxyz sets whose frames carry the data side's keys: the label (S2EF: the
calculator's energy; IS2RE: info y_relaxed), info energy_kind (total | adsorption) and
info reference_energy. The reference is linear in the composition (tests/fake_calcs.py
REFERENCES), so a per-element fit that recovers it is checkable to round-off.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from ase import Atoms
from ase.build import add_adsorbate, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.io import write

from mlip_zoo.errors import DatasetError
from mlip_zoo.evaluators.base import evaluator_for
from mlip_zoo.evaluators.oc20 import alignment
from mlip_zoo.evaluators.runner import RunOptions, evaluate

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # fake_calcs, for the adsorption-model card
from fake_calcs import REFERENCES, reference_energy  # noqa: E402

ADSORPTION_CARD = """\
key: ads-emt
name: EMT minus the test references (an adsorption-energy model)
version: "1"
family: ase
calculator: "fake_calcs:AdsorptionEMT"
license: MIT
targets: EFS
energy_target: oc20-adsorption
elements: [Al, Ni, Cu, Pt, H, C, N, O]
"""
ADSORBATES = ["H", "O", "N", "C", "OH", "CO", "NO", "CH", "NH", "OH2"]
METALS = ["Cu", "Pt", "Ni", "Al"]


def _frame(i: int, kind: str, with_reference: bool) -> Atoms:
    """A relaxed-looking OC20 frame labelled by EMT: an adsorbate on a 2x2x3 fcc(111) slab."""
    metal, ads = METALS[i % len(METALS)], ADSORBATES[(i // len(METALS)) % len(ADSORBATES)]
    atoms = fcc111(metal, (2, 2, 3), vacuum=6.0)
    atoms.set_tags([0 if t > 1 else 1 for t in atoms.get_tags()])
    adsorbate = molecule(ads) if len(ads) > 1 and ads != "OH2" else (molecule("H2O") if ads == "OH2" else ads)
    add_adsorbate(atoms, adsorbate, 1.8, "fcc")
    atoms.set_tags([t if t else 2 for t in atoms.get_tags()])  # the adsorbate's atoms: tag 2
    atoms.set_constraint(FixAtoms(mask=atoms.get_tags() == 0))
    atoms.rattle(0.05, seed=i)
    atoms.info.pop("adsorbate_info", None)
    atoms.positions = np.round(atoms.positions, 8)  # what extxyz stores, so labels hold on re-reading
    atoms.cell = np.round(atoms.cell[:], 8)
    reference = atoms.copy()
    reference.calc = EMT()
    total, forces = reference.get_potential_energy(), reference.get_forces()
    ref = reference_energy(atoms)
    label = total if kind == "total" else total - ref
    atoms.calc = SinglePointCalculator(atoms, energy=label, forces=forces)
    atoms.info.update({"sid": f"ads{i:03d}", "fid": 0, "split": ["id", "ood_ads"][i % 2], "energy_kind": kind})
    if with_reference:
        atoms.info["reference_energy"] = ref
    return atoms


def s2ef_set(folder: Path, kind: str, with_reference: bool, n: int = 80) -> Path:
    path = folder / f"s2ef-{kind}-{'ref' if with_reference else 'noref'}.extxyz"
    write(path, [_frame(i, kind, with_reference) for i in range(n)], format="extxyz")
    return path


@pytest.fixture
def ads_card(card_dir, monkeypatch):
    card_dir("ads-emt", ADSORPTION_CARD)
    monkeypatch.setenv("MLIPZOO_CARDS", str(card_dir.dir))
    return "ads-emt"


def _run(model, task, path, out, **options):
    from mlip_zoo.leaderboard.runs import with_alignment

    protocol = with_alignment(task, options["align"]) if "align" in options else task
    return evaluate(model, protocol, RunOptions(out=out, dataset=path, workers=0))


# --- like with like ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["total", "adsorption"])
@pytest.mark.parametrize("model", ["emt", "ads-emt"])
def test_each_model_is_scored_against_labels_of_its_kind(tmp_path, ads_card, kind, model):
    """Totals with references and adsorption energies with references are the same data: the
    reference is added back for a total-energy model and taken off for an adsorption model, so
    each reproduces the labels (EMT made them) whichever kind the dataset holds."""
    record = _run(model, "oc20-s2ef", s2ef_set(tmp_path, kind, True), tmp_path / "out")
    metrics = record.metrics
    assert record.n_failed == 0
    assert metrics["energy_mae"] < 1e-9 and metrics["energy_forces_within_threshold"] == 1.0
    assert metrics["forces_mae"] < 1e-6  # extxyz stores forces to 8 decimals
    # the aligned metrics are reported beside the raw ones; EMT needs no alignment here
    assert metrics["energy_mae_aligned"] < 1e-9 and metrics["aligned_coverage"] == 1.0


def test_like_with_like_on_predictions_rows():
    """The label a prediction is scored against, row by row (kinds read from the rows; null = total)."""
    rows = pa.table({"energy_true": [10.0, 4.0, 4.0, 10.0, 10.0, 4.0],
                     "energy_kind": ["total", "adsorption", "adsorption", "total", None, "adsorption"],
                     "energy_reference": [6.0, 6.0, None, 6.0, None, 6.0],
                     "energy_pred_kind": ["total", "total", "total", "adsorption", None, "adsorption"]})
    labels, comparable = alignment.comparable_labels(rows)
    assert comparable.tolist() == [True, True, False, True, True, True]
    assert labels[comparable].tolist() == [10.0, 10.0, 4.0, 10.0, 4.0]


# --- refused pairings --------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "kind", "target"), [("emt", "adsorption", "total"),
                                                       ("ads-emt", "total", "oc20-adsorption")])
def test_a_pairing_without_reference_is_refused_before_the_model_runs(tmp_path, ads_card, model, kind, target):
    data = s2ef_set(tmp_path, kind, False)
    out = tmp_path / "out"
    with pytest.raises(DatasetError) as refused:
        _run(model, "oc20-s2ef", data, out, align=False)
    message = str(refused.value)
    assert f"holds {kind} energies" in message and f"energy_target {target!r}" in message
    assert "--no-align" in message and "options.alignment" in message and "reference_energy" in message
    assert str(data) in message and "ads000_0" in message  # the file and the first record
    assert not list(out.rglob("shard-*.parquet"))  # refused on the driver: no shard ran


def test_without_reference_the_aligned_energy_is_scored_and_the_raw_one_is_not(tmp_path):
    """Alignment on (the task's default): a total-energy model on adsorption labels without
    references gets no raw energy number, and an aligned one that recovers the references."""
    record = _run("emt", "oc20-s2ef", s2ef_set(tmp_path, "adsorption", False), tmp_path / "out")
    metrics = record.metrics
    assert metrics["energy_mae"] is None and metrics["energy_forces_within_threshold"] is None
    assert metrics["forces_mae"] < 1e-6  # forces need no energy zero
    assert metrics["energy_mae_aligned"] < 1e-9 and metrics["aligned_coverage"] == 1.0
    fit = record.provenance.fitted["alignment"]
    for symbol, value in fit["coefficients"].items():
        assert value == pytest.approx(REFERENCES[symbol], abs=1e-8), symbol


# --- the alignment ----------------------------------------------------------------------------

def test_aligned_mae_equals_an_independent_least_squares_on_a_predictions_table():
    """Errors linear in the composition plus noise: the aligned MAE is the mean |residual| of an
    independent least-squares fit on the calibration rows, over the other rows only."""
    rng = np.random.default_rng(5)
    task = evaluator_for("oc20-s2ef")
    settings = task.options.alignment
    shift = {1: 0.7, 8: -1.3, 29: 2.1, 78: -0.4}
    rows = []
    for i in range(80):
        numbers = [29] * rng.integers(8, 13) + [78] * rng.integers(0, 4) + [8] * rng.integers(0, 3) \
            + [1] * rng.integers(0, 4)
        true = float(rng.normal(scale=5))
        noise = float(rng.normal(scale=0.05))
        pred = true + sum(shift[z] for z in numbers) + noise
        n = len(numbers)
        rows.append({"id": f"r{i:02d}", "split": "id", "n_atoms": n, "status": "ok", "reason": None, "seconds": 0.0,
                     "energy_true": true, "energy_pred": pred, "forces_true": [0.0] * 3 * n,
                     "forces_pred": [0.0] * 3 * n, "free": [True] * n, "energy_kind": "total",
                     "energy_reference": None, "energy_pred_kind": "total", "numbers": numbers, "_noise": noise})
    table = pa.Table.from_pylist([{k: v for k, v in r.items() if k != "_noise"} for r in rows],
                                 schema=task.schema)
    chosen = set(alignment.calibration_ids([r["id"] for r in rows], settings))
    assert len(chosen) == 20  # ceil(0.25 * 80)
    elements = [1, 8, 29, 78]

    def counts(r):
        return [r["numbers"].count(z) for z in elements]

    cal = [r for r in rows if r["id"] in chosen]
    coef = np.linalg.lstsq(np.array([counts(r) for r in cal], float),
                           np.array([r["energy_pred"] - r["energy_true"] for r in cal]), rcond=None)[0]
    rest = [r for r in rows if r["id"] not in chosen]
    expected = np.mean([abs(r["energy_pred"] - np.dot(counts(r), coef) - r["energy_true"]) for r in rest])
    metrics = task.metrics(table)
    assert metrics["energy_mae_aligned"] == pytest.approx(expected, rel=1e-9)
    assert metrics["energy_mae_aligned"] < 0.1 < metrics["energy_mae"]
    assert metrics["aligned_coverage"] == 1.0
    fitted = task.fitted(task.fit(table))["alignment"]
    assert fitted["calibration_ids"] == sorted(chosen) and fitted["n_fitted"] == 20 and fitted["rank"] == 4
    assert fitted["intercept"] is False
    assert [fitted["coefficients"][s] for s in ("H", "O", "Cu", "Pt")] == pytest.approx(coef, rel=1e-9)
    # shards concatenated: the same fit, the same numbers
    assert task.metrics(pa.concat_tables([table.slice(0, 33), table.slice(33)])) == metrics


def test_a_row_with_an_element_the_calibration_never_saw_has_no_aligned_energy():
    task = evaluator_for("oc20-s2ef")
    ids = [f"r{i:02d}" for i in range(40)]
    chosen = set(alignment.calibration_ids(ids, task.options.alignment))
    outsider = next(i for i in ids if i not in chosen)
    rows = []
    for i, rid in enumerate(ids):
        numbers = [29] * 12 + [8] * (i % 3) + ([7] if rid == outsider else [])
        n = len(numbers)
        rows.append({"id": rid, "split": "id", "n_atoms": n, "status": "ok", "reason": None, "seconds": 0.0,
                     "energy_true": 0.0, "energy_pred": 0.1 * n, "forces_true": [0.0] * 3 * n,
                     "forces_pred": [0.0] * 3 * n, "free": [True] * n, "numbers": numbers})
    metrics = task.metrics(pa.Table.from_pylist(rows, schema=task.schema))
    assert metrics["aligned_coverage"] == pytest.approx(29 / 30)  # 40 rows, 10 calibrate, one uncovered
    assert metrics["energy_mae_aligned"] == pytest.approx(0.0, abs=1e-12)


def test_calibration_subset_is_a_rule_of_the_ids():
    settings = alignment.Calibration(fraction=0.1, max_rows=3, seed=0)
    ids = [f"x{i}" for i in range(100)]
    chosen = alignment.calibration_ids(ids, settings)
    assert len(chosen) == 3 and chosen == alignment.calibration_ids(list(reversed(ids)), settings)
    assert alignment.calibration_ids(ids, settings.model_copy(update={"seed": 1})) != chosen
    assert len(alignment.calibration_ids(ids[:10], settings)) == 1  # ceil(0.1 * 10)


def test_calibration_subset_read_in_blocks_is_the_rule(monkeypatch):
    """Hashed a block at a time, keeping a heap of the smallest: the same subset as sorting every
    distinct id by its digest; an id drawn twice counts once."""
    import hashlib
    import math

    rng = np.random.default_rng(3)
    ids = [f"sys{i}_{j}" for i, j in zip(rng.integers(0, 400, 900), rng.integers(0, 3, 900))]  # duplicates
    monkeypatch.setattr(alignment, "BLOCK", 64)
    for settings in (alignment.Calibration(fraction=0.25, max_rows=1000, seed=2),
                     alignment.Calibration(fraction=0.5, max_rows=17, seed=0)):
        distinct = sorted(set(ids))
        k = min(settings.max_rows, math.ceil(settings.fraction * len(distinct)))
        rule = sorted(sorted(distinct, key=lambda i: hashlib.sha256(f"{settings.seed}:{i}".encode()).digest())[:k])
        assert alignment.calibration_ids(ids, settings) == rule
        assert alignment.calibration_ids(pa.chunked_array([ids[:300], ids[300:]]), settings) == rule


# --- provenance, reproduce ---------------------------------------------------------------------

def test_fit_is_recorded_and_reproduce_recomputes_it(tmp_path):
    from mlip_zoo.leaderboard.results import recompute

    record = _run("emt", "oc20-s2ef", s2ef_set(tmp_path, "adsorption", False), tmp_path / "out")
    path = tmp_path / "out" / "emt" / "oc20-s2ef.json"
    assert recompute(path).ok
    fit = record.provenance.fitted["alignment"]
    assert fit["calibration"] == {"fraction": 0.25, "max_rows": 5000, "seed": 0} and len(fit["calibration_ids"]) == 20
    assert record.intervals["energy_mae_aligned"] is not None
    data = json.loads(path.read_text())
    data["provenance"]["fitted"]["alignment"]["coefficients"]["Cu"] += 0.5
    path.write_text(json.dumps(data, indent=2))
    again = recompute(path)
    assert not again.ok and [d[0] for d in again.differences] == ["provenance.fitted.alignment.coefficients.Cu"]


def test_a_result_scored_without_alignment_reproduces_without_it(tmp_path):
    from mlip_zoo.leaderboard.results import recompute

    record = _run("emt", "oc20-s2ef", s2ef_set(tmp_path, "total", True, n=12), tmp_path / "out", align=False)
    assert "energy_mae_aligned" not in record.metrics and record.provenance.fitted is None
    assert recompute(tmp_path / "out" / "emt" / "oc20-s2ef.json").ok


def test_is2re_compares_relaxed_energies_like_with_like(tmp_path):
    """IS2RE's label is info y_relaxed, of the kind energy_kind says: a total-energy model is
    refused on adsorption labels without references (alignment off)."""
    frames = []
    for i in range(3):
        atoms = _frame(i, "adsorption", False)
        atoms.info["y_relaxed"] = float(atoms.calc.results["energy"])
        atoms.new_array("pos_relaxed", atoms.get_positions())
        atoms.calc = None
        frames.append(atoms)
    data = tmp_path / "is2re.extxyz"
    write(data, frames, format="extxyz")
    with pytest.raises(DatasetError, match="holds adsorption energies.*energy_target 'total'"):
        _run("emt", "oc20-is2re", data, tmp_path / "out", align=False)
    task = evaluator_for("oc20-is2re")
    assert task.compatible(_card("emt"), frames[0]) is None  # aligned: scored
    assert evaluator_for("oc20-is2rs").compatible(_card("emt"), frames[0]) is None  # no energies to compare


def _card(key):
    from mlip_zoo.zoo.card import get_card

    return get_card(key)


def test_a_bad_energy_kind_or_reference_is_named(tmp_path):
    task = evaluator_for("oc20-s2ef")
    atoms = _frame(0, "total", True)
    atoms.info["energy_kind"] = "formation"
    assert "energy_kind" in task.accepts(atoms) and "total, adsorption" in task.accepts(atoms)
    atoms.info.update({"energy_kind": "total", "reference_energy": float("nan")})
    assert "reference_energy" in task.accepts(atoms)


# --- real models on oc20-mini --------------------------------------------------------------------

@pytest.mark.slow
def test_chgnet_on_oc20_mini_is_scored_aligned_and_refused_on_adsorption_labels_without_alignment(tmp_path):
    """CHGNet (MPtrj totals) against oc20-mini's EMT labels: the raw energy MAE is tens of eV, the
    per-element aligned one far below it. On adsorption labels without references and alignment
    off it is refused, naming the flag."""
    from mlip_zoo.evaluators.data import iter_records, resolve_dataset

    record = evaluate("chgnet-0.3.0", "oc20-s2ef", RunOptions(out=tmp_path / "out", workers=0, limit=120))
    metrics = record.metrics
    assert metrics["energy_mae"] > 10.0  # EMT's zero is not MPtrj's: ~71 eV on the full set
    assert metrics["aligned_coverage"] > 0.9
    assert metrics["energy_mae_aligned"] < 0.1 * metrics["energy_mae"]
    assert record.provenance.fitted["alignment"]["n_fitted"] == 30  # ceil(0.25 * 120)

    dataset = resolve_dataset("oc20-mini", "s2ef")
    frames = []
    for atoms in iter_records(dataset.path):
        energy = atoms.calc.results["energy"] - atoms.info.pop("reference_energy", 0.0)
        atoms.calc.results["energy"] = energy
        atoms.info["energy_kind"] = "adsorption"
        frames.append(atoms)
        if len(frames) == 5:
            break
    data = tmp_path / "adsorption.extxyz"
    write(data, frames, format="extxyz")
    with pytest.raises(DatasetError, match="holds adsorption energies.*energy_target 'total'.*--no-align"):
        _run("chgnet-0.3.0", "oc20-s2ef", data, tmp_path / "refused", align=False)


def test_energy_parity_plots_labels_of_the_models_kind():
    task = evaluator_for("oc20-s2ef")
    rows = [{"id": f"r{i}", "split": "id", "n_atoms": 1, "status": "ok", "reason": None, "seconds": 0.1,
             "energy_true": 4.0, "energy_pred": 10.0, "forces_true": [0.0] * 3, "forces_pred": [0.0] * 3,
             "free": [True], "energy_kind": "adsorption", "energy_reference": ref, "energy_pred_kind": "total",
             "numbers": [29]} for i, ref in enumerate([6.0, None])]
    plots = task.plots(pa.Table.from_pylist(rows, schema=task.schema), {})
    assert plots["energy"] == {"x": [10.0], "y": [10.0]} and plots["n_ok"] == 2


def test_cli_no_align_refuses_and_says_how_to_align(tmp_path):
    from typer.testing import CliRunner

    from mlip_zoo.cli import app

    data = s2ef_set(tmp_path, "adsorption", False, n=4)
    args = ["eval", "emt", "oc20-s2ef", "--dataset", str(data), "--workers", "0", "--out", str(tmp_path / "out"),
            "--wandb", "disabled"]
    refused = CliRunner().invoke(app, [*args, "--no-align"])
    assert refused.exit_code != 0 and "energy_target 'total'" in refused.output and "--no-align" in refused.output
    wrong = CliRunner().invoke(app, ["eval", "emt", "oc20-is2rs", "--no-align", "--out", str(tmp_path / "o2")])
    assert wrong.exit_code != 0 and "no energy alignment" in wrong.output
