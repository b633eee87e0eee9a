"""Matbench Discovery's metrics, computed its way.

Discovery: ``each_pred = each_true + e_form_model - e_form_dft`` (eV/atom) and
``matbench_discovery.metrics.stable_metrics`` (stability threshold 0; a NaN prediction counts as
unstable, regression metrics drop NaNs) on three subsets: the full set, the unique prototypes, and
the ``most_stable_n`` unique prototypes with the lowest ``each_pred``.

Geometry optimisation (matbench-discovery ``structure/symmetry.py`` + ``metrics/geo_opt.py``):
RMSD from pymatgen ``StructureMatcher(stol=1.0, scale=False).get_rms_dist`` (no match -> NaN,
filled with 1.0 Å); symmetry from moyopy at each ``symprec``: space-group number and number of
operations of the model's vs the reference structure; a structure "matches" when the space-group
numbers are equal, "decreases"/"increases" when they differ and the model's has fewer/more
operations.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from ase import Atoms

RMSD_FILL = 1.0  # Å, for structures StructureMatcher cannot match (and failed relaxations)
SUBSETS = ("full_test_set", "unique_prototypes", "most_stable")


def _clean(value: Any) -> Any:
    """JSON-safe numbers: numpy scalars to Python, NaN to None."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


def stable_metrics(each_true: np.ndarray, each_pred: np.ndarray) -> dict[str, Any]:
    # Only this submodule: matbench_discovery.energy downloads from figshare when imported.
    from matbench_discovery.metrics import stable_metrics as reference

    if len(each_true) == 0:
        return {}
    with np.errstate(divide="ignore", invalid="ignore"):
        try:
            values = reference(each_true, each_pred, fillna=True)
        except (ZeroDivisionError, ValueError):
            # A subset without stable (or unstable) materials: the ratios are undefined, as is R2.
            values = _degenerate(each_true, each_pred)
    return {k: _clean(v) for k, v in values.items()}


def _degenerate(each_true: np.ndarray, each_pred: np.ndarray) -> dict[str, float]:
    from matbench_discovery.metrics import classify_stable

    tp, fn, fp, tn = (int(np.sum(x)) for x in classify_stable(each_true, each_pred, fillna=True))
    ok = ~(np.isnan(each_true) | np.isnan(each_pred))
    err = each_true[ok] - each_pred[ok]
    nan = float("nan")

    def ratio(a, b):
        return a / b if b else nan

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    prevalence = ratio(tp + fn, tp + fn + fp + tn)
    return {"F1": ratio(2 * precision * recall, precision + recall) if tp else (0.0 if tp + fn else nan),
            "DAF": ratio(precision, prevalence), "Precision": precision, "Recall": recall,
            "Accuracy": ratio(tp + tn, int(ok.sum())), "TPR": recall, "FPR": ratio(fp, fp + tn),
            "TNR": ratio(tn, fp + tn), "FNR": ratio(fn, tp + fn), "TP": tp, "FP": fp, "TN": tn, "FN": fn,
            "MAE": float(np.abs(err).mean()) if err.size else nan,
            "RMSE": float(np.sqrt((err ** 2).mean())) if err.size else nan, "R2": nan}


def subsets(each_pred: np.ndarray, unique: np.ndarray, most_stable_n: int) -> dict[str, np.ndarray]:
    """Boolean masks of the three subsets. "Most stable" ranks unique prototypes by each_pred;
    failed predictions (NaN) rank last, as they would in a sorted pandas column."""
    uniq_idx = np.flatnonzero(unique)
    order = uniq_idx[np.argsort(np.where(np.isnan(each_pred[uniq_idx]), np.inf, each_pred[uniq_idx]),
                                kind="stable")]
    most_stable = np.zeros(len(each_pred), bool)
    most_stable[order[:most_stable_n]] = True
    return {"full_test_set": np.ones(len(each_pred), bool), "unique_prototypes": unique.astype(bool),
            "most_stable": most_stable}


def discovery_metrics(each_true, e_form_pred, e_form_dft, unique, most_stable_n: int) -> dict[str, Any]:
    each_true = np.asarray(each_true, float)
    each_pred = each_true + np.asarray(e_form_pred, float) - np.asarray(e_form_dft, float)
    masks = subsets(each_pred, np.asarray(unique, bool), most_stable_n)
    out: dict[str, Any] = {}
    for name, mask in masks.items():
        out[name] = {**stable_metrics(each_true[mask], each_pred[mask]), "n": int(mask.sum())}
    return out


# ---- geometry -------------------------------------------------------------------------------------

def structure_rmsd(pred: Atoms, ref: Atoms) -> float:
    """RMSD (Å) after StructureMatcher(stol=1.0, scale=False) alignment; NaN when no match."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.io.ase import AseAtomsAdaptor

    matcher = StructureMatcher(stol=1.0, scale=False)
    found = matcher.get_rms_dist(AseAtomsAdaptor.get_structure(pred), AseAtomsAdaptor.get_structure(ref))
    return float(found[0]) if found is not None else float("nan")


def symmetry(atoms: Atoms, symprec: float) -> tuple[int, int]:
    """(space-group number, number of symmetry operations) from moyopy."""
    import moyopy
    from moyopy.interface import MoyoAdapter

    data = moyopy.MoyoDataset(MoyoAdapter.from_atoms(atoms), symprec=symprec)
    return int(data.number), int(data.operations.num_operations)


def geo_opt_metrics(rmsd, spg_pred, spg_ref, ops_pred, ops_ref) -> dict[str, Any]:
    """Mean RMSD (NaN -> 1 Å) and, per symprec, symmetry match/decrease/increase and n_sym_ops MAE.

    ``spg_*``/``ops_*`` map a symprec label to arrays, NaN where a relaxation failed: such a
    structure gets RMSD 1 Å and, as in matbench-discovery (whose ``n_structs`` counts analysed
    structures only), is left out of the symmetry fractions."""
    rmsd = np.asarray(rmsd, float)
    out: dict[str, Any] = {"rmsd": _clean(float(np.nan_to_num(rmsd, nan=RMSD_FILL).mean())) if rmsd.size else None,
                           "n": int(rmsd.size)}
    for label in spg_pred:
        spg_diff = np.asarray(spg_pred[label], float) - np.asarray(spg_ref[label], float)
        ops_diff = np.asarray(ops_pred[label], float) - np.asarray(ops_ref[label], float)
        n = int(np.sum(~np.isnan(spg_diff)))
        changed = spg_diff != 0  # NaN != 0 is True: a failed relaxation never "matches"
        out[f"symprec={label}"] = {
            "symmetry_match": _clean(np.sum(~changed) / n) if n else None,
            "symmetry_decrease": _clean(np.sum(changed & (ops_diff < 0)) / n) if n else None,
            "symmetry_increase": _clean(np.sum(changed & (ops_diff > 0)) / n) if n else None,
            "n_sym_ops_mae": _clean(np.nanmean(np.abs(ops_diff))) if n else None,
            "n": n,
        }
    return out
