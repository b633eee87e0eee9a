"""Tasks own what is theirs: the dataset layouts their package reads (``Evaluator.formats``), their
plots and figures (``Evaluator.plots``/``figures``); the generic reader and the site name no task.
One structure-id rule and one free-atom mask serve the zoo and every task."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from ase import Atoms
from ase.build import bulk
from ase.constraints import FixAtoms

from mlip_zoo.errors import DatasetError
from mlip_zoo.evaluators import data
from mlip_zoo.evaluators.base import dataset_formats, evaluator_for
from mlip_zoo.evaluators.oc20.metrics import adwt_curve, min_image
from mlip_zoo.zoo.structures import RECORD_INDEX, free_mask, record_id, structure_label

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_generic_reader_and_site_import_no_task_package():
    for path in (ROOT / "evaluators" / "data.py", ROOT / "leaderboard" / "site.py"):
        tasks = [m for m in _imports(path) if m.startswith("mlip_zoo.evaluators.")
                 and m.split(".")[2] in ("oc20", "discovery", "diatomics", "shift", "eos", "symmetry")]
        assert not tasks, f"{path.name} imports {tasks}"
    site = (ROOT / "leaderboard" / "site.py").read_text()
    assert "ood-shift" not in site and "is2rs" not in site


def test_task_packages_declare_their_formats():
    assert {f.name for f in dataset_formats()} == {"wbm", "diatomics", "oc20-s2ef-raw"}
    folder = data.datasets_dir() / "discovery-mini"
    assert data.dataset_format(folder) == "wbm"
    assert data.dataset_format(data.datasets_dir() / "diatomics-vasp" / "diatomics-dft.json.gz") == "diatomics"
    assert data.dataset_sha256(folder) != data.sha256_file(folder / "wbm-initial-atoms.extxyz.zip")  # every file


def test_unknown_format_lists_the_task_formats(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    with pytest.raises(DatasetError, match=r"unknown dataset format; use extxyz") as exc:
        data.dataset_format(path)
    assert "Matbench Discovery WBM layout" in str(exc.value) and "diatomic curves (*.json.gz)" in str(exc.value)


def _is2rs_table() -> pa.Table:
    rng = np.random.default_rng(3)
    rows = []
    for k in range(4):
        n = 3
        pos = rng.normal(size=(n, 3)) * 2
        rows.append({"status": "ok" if k < 3 else "failed", "seconds": 0.5 + k, "energy_true": float(k),
                     "energy_pred": float(k) + 0.1, "pos_true": pos.ravel().tolist(),
                     "pos_pred": (pos + rng.normal(size=(n, 3)) * 0.3).ravel().tolist(),
                     "cell": (np.eye(3) * 5).ravel().tolist(), "free": [True, k != 1, False]})
    return pa.Table.from_pylist(rows)


def test_is2rs_plots_the_adwt_curve_of_free_atoms():
    table = _is2rs_table()
    out = evaluator_for("oc20-is2rs").plots(table, {})
    assert out["n_ok"] == 3 and out["seconds"] == pytest.approx(1.5) and len(out["energy"]["x"]) == 3
    dists = []
    for r in table.to_pylist()[:3]:
        free = np.asarray(r["free"])
        diff = (np.reshape(r["pos_pred"], (-1, 3)) - np.reshape(r["pos_true"], (-1, 3)))[free]
        dists.append(float(np.linalg.norm(min_image(diff, np.reshape(r["cell"], (3, 3))), axis=1).mean()))
    thresholds, frac = adwt_curve(dists)
    assert out["adwt"]["y"] == pytest.approx(frac, abs=1e-6) and len(out["adwt"]["x"]) == len(thresholds)
    assert [f.id for f in evaluator_for("oc20-is2rs").figures({"m": out})] == ["plot-adwt"]


def test_ood_shift_plots_bins_and_leaves_out_an_na_axis():
    bins = {"bin0": {"range": "< 1", "forces_mae": 0.1, "n": 2}, "bin1": {"range": ">= 1", "forces_mae": None, "n": 0}}
    metrics = {"axes": {"element": {"bins": bins}, "force_norm": {"bins": bins},
                        "connectivity": {"status": "n/a", "reason": "statistics only"}}}
    mptrj = evaluator_for("ood-shift-mptrj")
    out = mptrj.plots(pa.Table.from_pylist([{"status": "failed", "seconds": None}]), metrics)
    assert set(out["shift"]) == {"element", "force_norm"}
    assert out["shift"]["element"] == {"x": ["< 1", ">= 1"], "y": [0.1, None], "n": [2, 0]}
    figures = mptrj.figures({"emt": out})
    assert [f.id for f in figures] == ["plot-forces", "plot-shift-element", "plot-shift-force_norm"]
    assert "tail" in figures[2].xlabel and "mean |F|" not in figures[2].xlabel
    shipped = evaluator_for("ood-shift").figures({"emt": {"shift": {a: {} for a in metrics["axes"]}}})
    assert [f.axis for f in shipped[1:]] == ["element", "force_norm", "connectivity"]
    assert shipped[2].xlabel == "mean |F| of the labels (eV/Å)"


def test_one_id_rule_for_rows_and_errors():
    atoms = bulk("Cu")
    assert record_id(atoms, 4) == "#4" and structure_label(atoms, 4) == "#4 (Cu)"
    atoms.info[RECORD_INDEX] = 17  # the dataset index wins over the shard index, in rows and errors alike
    assert record_id(atoms, 4) == "#17" and structure_label(atoms, 4) == "#17 (Cu)"
    atoms.info.update(material_id="wbm-1", id="x")
    assert record_id(atoms, 0) == "x" and structure_label(atoms, 0) == "id=x"
    atoms.info.update(sid=5, fid=2)
    assert record_id(atoms, 0) == "5_2" and structure_label(atoms, 0) == "sid=5_2"


def test_one_free_atom_mask():
    atoms = Atoms("Cu3", positions=np.eye(3))
    atoms.set_constraint(FixAtoms(indices=[1]))
    assert free_mask(atoms).tolist() == [True, False, True]
    assert data.free_mask is free_mask and data.record_id is record_id
