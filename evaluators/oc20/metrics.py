"""OC20 metrics with the fairchem v1 evaluator definitions (pure numpy, no I/O).

Every metric is a ``Metric(total, numel)``; batches/shards merge as sum(total) / sum(numel).
Forces and positions are scored on FREE atoms only (``free[i]`` is True where the atom is not fixed).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

ADWT_THRESHOLDS = np.arange(0.01, 0.5, 0.001)
assert len(ADWT_THRESHOLDS) == 490
_COS_EPS = np.float32(1e-8)

S2EF_KEYS = ("energy_mae", "forces_mae", "forcesx_mae", "forcesy_mae", "forcesz_mae",
             "forces_cosine_similarity", "forces_magnitude_error", "energy_forces_within_threshold")
IS2RE_KEYS = ("energy_mae", "energy_mse", "energy_within_threshold")
IS2RS_KEYS = ("average_distance_within_threshold", "positions_mae", "positions_mse")


@dataclass(frozen=True)
class Metric:
    """An accumulated metric: value = total / numel (None when numel == 0)."""

    total: float = 0.0
    numel: int = 0

    @property
    def value(self) -> float | None:
        return self.total / self.numel if self.numel else None

    def __add__(self, other: Metric) -> Metric:
        if not isinstance(other, Metric):
            return NotImplemented
        return Metric(self.total + other.total, self.numel + other.numel)

    def __radd__(self, other):  # lets sum() start from 0
        return self if other == 0 else NotImplemented


def merge(parts: Iterable[dict[str, Metric]]) -> dict[str, Metric]:
    """Merge per-batch/per-shard metric dicts key by key: (sum total, sum numel)."""
    out: dict[str, Metric] = {}
    for part in parts:
        for key, metric in part.items():
            out[key] = out.get(key, Metric()) + metric
    return out


def values(metrics: dict[str, Metric]) -> dict[str, float | None]:
    """{name: total / numel} (None for metrics over zero elements)."""
    return {k: m.value for k, m in metrics.items()}


def _check_energies(energy_true, energy_pred) -> tuple[np.ndarray, np.ndarray]:
    et = np.asarray(energy_true, dtype=float).reshape(-1)
    ep = np.asarray(energy_pred, dtype=float).reshape(-1)
    if et.shape != ep.shape:
        raise ValueError(f"energy_true has {et.size} systems but energy_pred has {ep.size}")
    return et, ep


def _check_atoms(n_sys: int, names: Sequence[str], *arrays) -> None:
    """Every per-system list has n_sys entries; vectors are (n_i, 3) and free is (n_i,) bool."""
    for name, arr in zip(names, arrays):
        if len(arr) != n_sys:
            raise ValueError(f"{name} has {len(arr)} systems, expected {n_sys}")
    for i in range(n_sys):
        a, b, free = (np.asarray(x[i]) for x in arrays)
        if a.ndim != 2 or a.shape[1] != 3 or a.shape != b.shape:
            raise ValueError(f"system {i}: {names[0]} shape {a.shape} and {names[1]} shape {b.shape} "
                             "must both be (n_atoms, 3)")
        if free.shape != (a.shape[0],):
            raise ValueError(f"system {i}: free has shape {free.shape}, expected ({a.shape[0]},)")


def is2re_metrics(energy_true, energy_pred, *, energy_threshold=0.02) -> dict[str, Metric]:
    """energy_mae = mean |dE|; energy_mse = mean dE^2; EwT = share of systems with |dE| < threshold."""
    et, ep = _check_energies(energy_true, energy_pred)
    de = np.abs(ep - et)
    n = int(de.size)
    return {"energy_mae": Metric(float(de.sum()), n), "energy_mse": Metric(float((de ** 2).sum()), n),
            "energy_within_threshold": Metric(float(np.count_nonzero(de < energy_threshold)), n)}


def s2ef_metrics(energy_true, energy_pred, forces_true, forces_pred, free, *,
                 energy_threshold=0.02, force_threshold=0.03) -> dict[str, Metric]:
    """S2EF metrics over free atoms.

    forces_mae = mean |dF| over free atoms x 3 components; forces{x,y,z}_mae per component;
    forces_cosine_similarity = mean_i dot(Fp_i, Ft_i) / max(|Fp_i||Ft_i|, 1e-8) in float32;
    forces_magnitude_error = mean_i | |Fp_i| - |Ft_i| |;
    EFwT = share of systems with |dE| < energy_threshold and max_{free i, c} |dF_ic| < force_threshold
    (a system without free atoms is judged on energy alone).
    """
    et, ep = _check_energies(energy_true, energy_pred)
    _check_atoms(et.size, ("forces_true", "forces_pred", "free"), forces_true, forces_pred, free)
    de = np.abs(ep - et)
    acc = dict.fromkeys(("abs", "x", "y", "z", "cos", "mag"), 0.0)
    n_free, within = 0, 0
    for i in range(et.size):
        mask = np.asarray(free[i], dtype=bool)
        ft = np.asarray(forces_true[i], dtype=float)[mask]
        fp = np.asarray(forces_pred[i], dtype=float)[mask]
        df = np.abs(fp - ft)
        acc["abs"] += float(df.sum())
        for c, key in enumerate("xyz"):
            acc[key] += float(df[:, c].sum())
        a, b = fp.astype(np.float32), ft.astype(np.float32)
        denom = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), _COS_EPS)
        acc["cos"] += float(((a * b).sum(axis=1) / denom).astype(np.float64).sum())
        acc["mag"] += float(np.abs(np.linalg.norm(fp, axis=1) - np.linalg.norm(ft, axis=1)).sum())
        n_free += int(mask.sum())
        forces_ok = df.size == 0 or df.max() < force_threshold
        within += int(de[i] < energy_threshold and forces_ok)
    n = int(et.size)
    return {"energy_mae": Metric(float(de.sum()), n), "forces_mae": Metric(acc["abs"], 3 * n_free),
            "forcesx_mae": Metric(acc["x"], n_free), "forcesy_mae": Metric(acc["y"], n_free),
            "forcesz_mae": Metric(acc["z"], n_free), "forces_cosine_similarity": Metric(acc["cos"], n_free),
            "forces_magnitude_error": Metric(acc["mag"], n_free),
            "energy_forces_within_threshold": Metric(float(within), n)}


def min_image(diff: np.ndarray, cell: np.ndarray, pbc=(True, True, True)) -> np.ndarray:
    """Minimum-image displacement: frac = solve(cell.T, diff.T).T, wrap periodic axes into (-0.5, 0.5]
    (frac %= 1 twice so 1.0 maps to 0, then frac > 0.5 -> frac - 1), back to Cartesian as frac @ cell.
    Without periodicity (all pbc False or a zero cell) the raw difference is returned."""
    diff = np.asarray(diff, dtype=float)
    cell = np.asarray(cell, dtype=float).reshape(3, 3)
    periodic = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if not periodic.any() or not cell.any():
        return diff.copy()
    vecs = diff.reshape(-1, 3)
    frac = np.linalg.solve(cell.T, vecs.T).T
    for axis in np.flatnonzero(periodic):
        col = frac[:, axis] % 1.0
        col %= 1.0
        col[col > 0.5] -= 1.0
        frac[:, axis] = col
    return (frac @ cell).reshape(diff.shape)


def adwt_curve(distances) -> tuple[np.ndarray, np.ndarray]:
    """(ADWT_THRESHOLDS, share of per-system distances d with d < t for each threshold t)."""
    d = np.asarray(distances, dtype=float).reshape(-1)
    if d.size == 0:
        return ADWT_THRESHOLDS.copy(), np.full(ADWT_THRESHOLDS.size, np.nan)
    return ADWT_THRESHOLDS.copy(), (d[:, None] < ADWT_THRESHOLDS[None, :]).mean(axis=0)


def is2rs_metrics(pos_true, pos_pred, cells, pbc, free) -> dict[str, Metric]:
    """IS2RS metrics over free atoms.

    ADwT, on minimum-image differences dp: d_s = mean_i |dp_i| per system; total = sum_s #{t : d_s < t} / 490, numel = #systems
    (a system with no free atoms has d = NaN and passes no threshold, as in fairchem).
    positions_mae / positions_mse = mean |x_pred - x_true| / its square over free atoms x 3
    components, on raw (unwrapped) differences, as fairchem's evaluator computes them.
    """
    n_sys = len(pos_true)
    _check_atoms(n_sys, ("pos_true", "pos_pred", "free"), pos_true, pos_pred, free)
    for name, arr in (("cells", cells), ("pbc", pbc)):
        if len(arr) != n_sys:
            raise ValueError(f"{name} has {len(arr)} systems, expected {n_sys}")
    adwt, abs_sum, sq_sum, n_comp = 0.0, 0.0, 0.0, 0
    for i in range(n_sys):
        if np.asarray(cells[i]).size != 9 or np.asarray(pbc[i]).size not in (1, 3):
            raise ValueError(f"system {i}: cell must be (3, 3) and pbc 3 booleans")
        mask = np.asarray(free[i], dtype=bool)
        raw = np.asarray(pos_pred[i], float)[mask] - np.asarray(pos_true[i], float)[mask]
        dp = min_image(raw, cells[i], pbc[i])
        if mask.any():
            d = float(np.linalg.norm(dp, axis=1).mean())
            adwt += np.count_nonzero(d < ADWT_THRESHOLDS) / ADWT_THRESHOLDS.size
        abs_sum += float(np.abs(raw).sum())
        sq_sum += float((raw ** 2).sum())
        n_comp += int(raw.size)
    return {"average_distance_within_threshold": Metric(float(adwt), n_sys),
            "positions_mae": Metric(abs_sum, n_comp), "positions_mse": Metric(sq_sum, n_comp)}
