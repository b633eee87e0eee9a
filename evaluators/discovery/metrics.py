"""Matbench Discovery's metrics, our own vectorised implementation of its definitions.

Reference: matbench-discovery at commit 2c7f9fc (2026-07, after 1.3.1),
``matbench_discovery/metrics/discovery.py`` (``stable_metrics``, ``calc_discovery_metrics``) and
``metrics/geo_opt.py`` (``calc_geo_opt_metrics``). It agrees with 1.3.1 except where 1.3.1 was
wrong: Accuracy divided by the non-NaN count (it could exceed 1) and a subset with one class only
raised or lost its R2. Nothing here imports matbench_discovery.

Discovery: ``each_pred = each_true + e_form_model - e_form_dft`` (eV/atom); stable means <= 0. A
NaN prediction counts as predicted unstable, a NaN ``each_true`` as neither stable nor unstable;
MAE, RMSE and R2 drop rows with a NaN. Three subsets: the full set, the unique prototypes, and the
``most_stable_n`` unique prototypes with the lowest ``each_pred``; the DAF of the last two divides
their precision by the prevalence of the unique prototypes (the reference's DAF denominator).

Geometry optimisation (matbench-discovery ``structure/symmetry.py`` + ``metrics/geo_opt.py``):
RMSD from pymatgen ``StructureMatcher(stol=1.0, scale=False).get_rms_dist`` (no match -> NaN,
filled with 1.0 Å); symmetry from moyopy at each ``symprec``: space-group number and number of
operations of the model's vs the reference structure; a structure "matches" when the space-group
numbers are equal, "decreases"/"increases" when they differ and the model's has fewer/more
operations. A failed relaxation has no row in matbench-discovery: ``rmsd`` leaves it out, and
``rmsd_failed_as_1A`` counts it as 1 Å (a penalised variant of ours).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from ase import Atoms

from mlip_zoo.evaluators.uncertainty import weighted_sums

STABILITY_THRESHOLD = 0.0  # eV/atom above the hull
RMSD_FILL = 1.0  # Å: StructureMatcher's stol, for structures it cannot match
NAN = float("nan")


def _clean(value: Any) -> Any:
    """JSON-safe numbers: numpy scalars to Python, NaN to None."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


def _ratio(num: float, den: float) -> float:
    """num / den, NaN when den is not positive (the reference's guard on every ratio)."""
    return num / den if den > 0 else NAN


def _r2(y: np.ndarray, y_hat: np.ndarray) -> float:
    """sklearn's r2_score (force_finite): 1 for a perfect fit, 0 for an imperfect one of a constant
    truth; NaN with fewer than two rows, where the reference does not call it."""
    if y.size < 2:
        return NAN
    residual, spread = np.sum((y - y_hat) ** 2), np.sum((y - y.mean()) ** 2)
    if residual == 0:
        return 1.0
    return float(1 - residual / spread) if spread != 0 else 0.0


def stable_metrics(each_true, each_pred, *, prevalence: float | None = None) -> dict[str, float | int]:
    """Classification (F1, DAF, Precision, Recall, Accuracy, TPR, FPR, TNR, FNR, TP, FP, TN, FN) and
    regression (MAE, RMSE, R2) metrics of predicted hull distances, NaN where undefined.

    F1 is NaN without a true positive (precision + recall = 0 or undefined); Accuracy is
    (TP + TN) over every row with a defined truth. DAF = precision / ``prevalence``, by default this
    set's own share of stable materials."""
    each_true, each_pred = np.asarray(each_true, float), np.asarray(each_pred, float)
    if each_true.shape != each_pred.shape or each_true.ndim != 1:
        raise ValueError(f"each_true {each_true.shape} and each_pred {each_pred.shape} must be one value per row")
    stable, unstable = each_true <= STABILITY_THRESHOLD, each_true > STABILITY_THRESHOLD
    called = each_pred <= STABILITY_THRESHOLD  # False for NaN: a failed prediction is "unstable"
    tp, fn = int(np.count_nonzero(stable & called)), int(np.count_nonzero(stable & ~called))
    fp, tn = int(np.count_nonzero(unstable & called)), int(np.count_nonzero(unstable & ~called))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    if prevalence is None:
        prevalence = _ratio(tp + fn, tp + fn + fp + tn)
    ok = ~(np.isnan(each_true) | np.isnan(each_pred))
    err = each_true[ok] - each_pred[ok]
    return {"F1": 2 * (precision * recall) / (precision + recall) if precision + recall > 0 else NAN,
            "DAF": _ratio(precision, prevalence), "Precision": precision, "Recall": recall,
            "Accuracy": _ratio(tp + tn, tp + fn + fp + tn),
            "TPR": recall, "FPR": _ratio(fp, fp + tn), "TNR": _ratio(tn, fp + tn), "FNR": _ratio(fn, tp + fn),
            "TP": tp, "FP": fp, "TN": tn, "FN": fn,
            "MAE": float(np.abs(err).mean()) if err.size else NAN,
            "RMSE": float(np.sqrt((err ** 2).mean())) if err.size else NAN,
            "R2": _r2(each_true[ok], each_pred[ok])}


def subsets(each_pred: np.ndarray, unique: np.ndarray, most_stable_n: int) -> dict[str, np.ndarray]:
    """Boolean masks of the three subsets. "Most stable" ranks unique prototypes by each_pred, ties
    in row order and failed predictions (NaN) last, as the reference's stable pandas sort does."""
    most_stable = np.zeros(len(each_pred), bool)
    most_stable[_lowest(each_pred, np.flatnonzero(unique), most_stable_n)] = True
    return {"full_test_set": np.ones(len(each_pred), bool), "unique_prototypes": unique.astype(bool),
            "most_stable": most_stable}


def _lowest(values: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` of ``rows`` (ascending) with the lowest ``values``, ties in row order and NaN last:
    the first ``k`` of a stable sort, found in linear time (a partition, then the boundary's ties
    in row order)."""
    if k >= rows.size:
        return rows
    if k <= 0:
        return rows[:0]
    v = values[rows]
    kth = np.partition(v, k - 1)[k - 1]  # NaN partitions last, as it sorts
    if np.isnan(kth):
        below, tied = ~np.isnan(v), np.isnan(v)
    else:
        below, tied = v < kth, v == kth
    ties = np.flatnonzero(tied)[:k - np.count_nonzero(below)]
    return rows[np.concatenate([np.flatnonzero(below), ties])]


def discovery_metrics(each_true, e_form_pred, e_form_dft, unique, most_stable_n: int) -> dict[str, Any]:
    """Per subset, ``stable_metrics`` (NaN -> None) and its row count ``n``."""
    each_true = np.asarray(each_true, float)
    each_pred = each_true + np.asarray(e_form_pred, float) - np.asarray(e_form_dft, float)
    unique = np.asarray(unique, bool)
    masks = subsets(each_pred, unique, most_stable_n)
    # The reference's DAF denominator: a NaN each_true counts as not stable here (a mean over rows).
    uniq_prevalence = float(np.mean(each_true[unique] <= STABILITY_THRESHOLD)) if unique.any() else NAN
    out: dict[str, Any] = {}
    for name, mask in masks.items():
        if name == "full_test_set":  # every row: no copy
            values = stable_metrics(each_true, each_pred)
        else:
            values = stable_metrics(each_true[mask], each_pred[mask], prevalence=uniq_prevalence)
        out[name] = {**{k: _clean(v) for k, v in values.items()}, "n": int(mask.sum())}
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


def geo_opt_metrics(rmsd, failed, spg_pred, spg_ref, ops_pred, ops_ref) -> dict[str, Any]:
    """Mean RMSD and, per symprec, symmetry match/decrease/increase and n_sym_ops MAE.

    ``rmsd`` has one value per structure (NaN: StructureMatcher found no match, scored 1 Å);
    ``failed`` marks failed relaxations. ``rmsd`` is matbench-discovery's: a failed relaxation has
    no row; ``rmsd_failed_as_1A`` scores it 1 Å instead. ``spg_*``/``ops_*`` map a symprec label to
    arrays, NaN where a relaxation failed; the symmetry fractions count structures with a space
    group (the reference's ``n_structures``)."""
    rmsd, failed = np.asarray(rmsd, float), np.asarray(failed, bool)
    if rmsd.shape != failed.shape:
        raise ValueError(f"rmsd has {rmsd.size} values but failed {failed.size}: one per structure each")
    filled = np.where(np.isnan(rmsd), RMSD_FILL, rmsd)
    out: dict[str, Any] = {
        "rmsd": _clean(float(filled[~failed].mean())) if (~failed).any() else None,
        "rmsd_failed_as_1A": _clean(float(np.where(failed, RMSD_FILL, filled).mean())) if rmsd.size else None,
        "n": int(rmsd.size), "n_failed": int(failed.sum())}
    for label in spg_pred:
        spg_diff = np.asarray(spg_pred[label], float) - np.asarray(spg_ref[label], float)
        ops_diff = np.asarray(ops_pred[label], float) - np.asarray(ops_ref[label], float)
        valid = ~np.isnan(spg_diff)
        n = int(valid.sum())
        changed = valid & (spg_diff != 0)
        ops_err = np.abs(ops_diff[valid])
        ops_err = ops_err[~np.isnan(ops_err)]
        out[f"symprec={label}"] = {
            "symmetry_match": _clean(np.sum(valid & ~changed) / n) if n else None,
            "symmetry_decrease": _clean(np.sum(changed & (ops_diff < 0)) / n) if n else None,
            "symmetry_increase": _clean(np.sum(changed & (ops_diff > 0)) / n) if n else None,
            "n_sym_ops_mae": _clean(float(ops_err.mean())) if ops_err.size else None,
            "n": n,
        }
    return out


def geo_opt_terms(rmsd, failed, spg_pred, spg_ref, ops_pred, ops_ref) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``geo_opt_metrics`` as per-row ``(total, numel)`` terms: each of its means and fractions is a
    ratio of per-row sums, so the bootstrap evaluates every resample with two matrix products."""
    rmsd, failed = np.asarray(rmsd, float), np.asarray(failed, bool)
    filled = np.where(np.isnan(rmsd), RMSD_FILL, rmsd)
    kept = (~failed).astype(float)
    out = {"rmsd": (np.where(failed, 0.0, filled), kept),
           "rmsd_failed_as_1A": (np.where(failed, RMSD_FILL, filled), np.ones(rmsd.size))}
    for label in spg_pred:
        spg_diff = np.asarray(spg_pred[label], float) - np.asarray(spg_ref[label], float)
        ops_diff = np.asarray(ops_pred[label], float) - np.asarray(ops_ref[label], float)
        valid = ~np.isnan(spg_diff)
        changed = valid & (spg_diff != 0)
        with np.errstate(invalid="ignore"):
            fewer, more = changed & (ops_diff < 0), changed & (ops_diff > 0)
        counted = valid & ~np.isnan(ops_diff)
        n = valid.astype(float)
        out[f"symprec={label}.symmetry_match"] = ((valid & ~changed).astype(float), n)
        out[f"symprec={label}.symmetry_decrease"] = (fewer.astype(float), n)
        out[f"symprec={label}.symmetry_increase"] = (more.astype(float), n)
        out[f"symprec={label}.n_sym_ops_mae"] = (np.where(counted, np.abs(ops_diff), 0.0), counted.astype(float))
    return out


# ---- every bootstrap resample at once ---------------------------------------------------------

# Per-row columns whose weighted sums give every metric of ``stable_metrics``.
_SUMS = ("tp", "fn", "fp", "tn", "n_ok", "abs", "sq", "y", "y2")


def _row_sums(each_true: np.ndarray, each_pred: np.ndarray) -> np.ndarray:
    """``(rows, len(_SUMS))``: what each row adds to each sum."""
    stable, unstable = each_true <= STABILITY_THRESHOLD, each_true > STABILITY_THRESHOLD
    called = each_pred <= STABILITY_THRESHOLD  # False for NaN, as in stable_metrics
    ok = ~(np.isnan(each_true) | np.isnan(each_pred))
    err = np.where(ok, each_true - each_pred, 0.0)
    y = np.where(ok, each_true, 0.0)
    return np.column_stack([stable & called, stable & ~called, unstable & called, unstable & ~called, ok,
                            np.abs(err), err * err, y, y * y]).astype(float)


def _ratio_v(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _from_sums(sums: np.ndarray, prevalence: np.ndarray | None) -> dict[str, np.ndarray]:
    """``stable_metrics`` (same definitions and guards) of every resample from its weighted sums."""
    tp, fn, fp, tn, n_ok, sum_abs, sum_sq, sum_y, sum_y2 = sums.T
    precision, recall = _ratio_v(tp, tp + fp), _ratio_v(tp, tp + fn)
    prevalence = _ratio_v(tp + fn, tp + fn + fp + tn) if prevalence is None else prevalence
    both = precision + recall
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(both > 0, 2 * (precision * recall) / np.where(both > 0, both, 1.0), np.nan)
        spread = sum_y2 - sum_y * sum_y / np.where(n_ok > 0, n_ok, 1.0)
        r2 = np.where(n_ok < 2, np.nan, np.where(sum_sq == 0, 1.0, np.where(
            spread != 0, 1 - sum_sq / np.where(spread != 0, spread, 1.0), 0.0)))
    return {"F1": f1, "DAF": _ratio_v(precision, prevalence), "Precision": precision, "Recall": recall,
            "Accuracy": _ratio_v(tp + tn, tp + fn + fp + tn), "TPR": recall, "FPR": _ratio_v(fp, fp + tn),
            "TNR": _ratio_v(tn, fp + tn), "FNR": _ratio_v(fn, tp + fn), "MAE": _ratio_v(sum_abs, n_ok),
            "RMSE": np.sqrt(_ratio_v(sum_sq, n_ok)), "R2": r2}


class DiscoveryResampler:
    """``discovery_metrics`` of every resample of a count matrix ``(resamples, rows)``, per subset,
    from matrix products: the per-row sums are laid out once, a chunk of resamples is one product.

    The most-stable subset takes, in the order ``subsets`` sorts the unique prototypes (by
    each_pred, ties in row order, NaN last; a drawn row's copies are adjacent), the first
    ``most_stable_n`` drawn copies: one sort for all resamples, then a cumulative count per
    resample over as many sorted rows as it takes to reach ``most_stable_n``.

    ``tallies``: further per-row columns ``(rows, k)`` whose weighted sums the caller needs (the
    task's converged fraction), returned under ``"tallies"`` from the same pass over the counts."""

    def __init__(self, each_true, e_form_pred, e_form_dft, unique, most_stable_n: int,
                 tallies: np.ndarray | None = None):
        each_true = np.asarray(each_true, float)
        each_pred = each_true + np.asarray(e_form_pred, float) - np.asarray(e_form_dft, float)
        self.unique = np.asarray(unique, bool)
        self.n_most = most_stable_n
        sums = _row_sums(each_true, each_pred)
        stable_unique = self.unique & (each_true <= STABILITY_THRESHOLD)
        # full set | unique prototypes | the two counts of the unique prevalence (DAF's denominator)
        tallies = np.zeros((each_true.size, 0)) if tallies is None else np.asarray(tallies, float)
        self.by_row = np.column_stack([sums, sums * self.unique[:, None], self.unique, stable_unique, tallies])
        uniq_idx = np.flatnonzero(self.unique)
        values = each_pred[uniq_idx]
        self.order = uniq_idx[np.lexsort((values, np.isnan(values)))]
        self.sorted_sums = sums[self.order]

    def __call__(self, counts: np.ndarray) -> dict[str, Any]:
        k = len(_SUMS)
        [totals] = weighted_sums(counts, [self.by_row])
        uniq_prevalence = _ratio_v(totals[:, 2 * k + 1], totals[:, 2 * k])
        prefix = min(self.order.size, 2 * self.n_most + 64)  # enough for almost every resample
        while True:
            drawn = counts[:, self.order[:prefix]].astype(float)
            reached = drawn.sum(axis=1) >= self.n_most
            if reached.all() or prefix == self.order.size:
                break
            prefix = min(self.order.size, 2 * prefix)
        before = np.cumsum(drawn, axis=1) - drawn
        taken = np.clip(self.n_most - before, 0.0, drawn)
        return {"full_test_set": _from_sums(totals[:, :k], None),
                "unique_prototypes": _from_sums(totals[:, k:2 * k], uniq_prevalence),
                "most_stable": _from_sums(taken @ self.sorted_sums[:prefix], uniq_prevalence),
                "tallies": totals[:, 2 * k + 2:]}
