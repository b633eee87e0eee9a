"""OC20 metrics with the fairchem v1 evaluator definitions (pure numpy, no I/O).

Every metric is a ``Metric(total, numel)``; batches/shards merge as sum(total) / sum(numel).
Forces and positions are scored on FREE atoms only (``free[i]`` is True where the atom is not fixed).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from mlip_zoo.evaluators.base import Terms

ADWT_THRESHOLDS = np.arange(0.01, 0.5, 0.001)
assert len(ADWT_THRESHOLDS) == 490
_COS_EPS = np.float32(1e-8)
NO_FREE_ATOMS = "every atom is fixed, so the forces and positions metrics are undefined"

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


def _require_free_atoms(n_free: np.ndarray) -> None:
    """Forces and positions metrics need a free atom in every system. fairchem raises on such a
    system (EFwT takes a max over no atoms); the tasks record it as a failed structure instead."""
    empty = np.flatnonzero(n_free == 0)
    if empty.size:
        raise ValueError(f"system {int(empty[0])} has no free atoms: {NO_FREE_ATOMS}; leave it out "
                         "(the OC20 tasks record such a structure as failed)")


def force_cosine(forces_pred: np.ndarray, forces_true: np.ndarray) -> np.ndarray:
    """Per-atom cosine of (n, 3) forces as torch.cosine_similarity (which fairchem calls) computes
    it: in float32, each vector divided by its own norm clamped to 1e-8, then the dot product. The
    cosine of two forces is unchanged when both are scaled, down to |F| ~ 1e-8; a zero force
    scores 0."""
    a, b = np.asarray(forces_pred, np.float32), np.asarray(forces_true, np.float32)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), _COS_EPS)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), _COS_EPS)
    return (a * b).sum(axis=1).astype(np.float64)


def totals(terms: Terms) -> dict[str, Metric]:
    """Each term's (sum total, sum numel): over all systems, or over its ``rows`` when it has them."""
    out = {}
    for key, (total, numel, *rows) in terms.items():
        if rows:
            total, numel = total[rows[0]], numel[rows[0]]
        out[key] = Metric(float(total.sum()), int(numel.sum()))
    return out


def is2re_terms(energy_true, energy_pred, *, energy_threshold=0.02) -> Terms:
    """Per system: |dE| and dE^2 over 1, and whether |dE| < threshold (EwT; strict)."""
    et, ep = _check_energies(energy_true, energy_pred)
    de = np.abs(ep - et)
    ones = np.ones(de.size)
    return {"energy_mae": (de, ones), "energy_mse": (de ** 2, ones),
            "energy_within_threshold": ((de < energy_threshold).astype(float), ones)}


def is2re_metrics(energy_true, energy_pred, *, energy_threshold=0.02) -> dict[str, Metric]:
    """energy_mae = mean |dE|; energy_mse = mean dE^2; EwT = share of systems with |dE| < threshold."""
    return totals(is2re_terms(energy_true, energy_pred, energy_threshold=energy_threshold))


def s2ef_terms(energy_true, energy_pred, forces_true, forces_pred, free, system, *,
               energy_threshold=0.02, force_threshold=0.03) -> Terms:
    """Per-system terms of the S2EF metrics, computed on all atoms at once (no per-system loop).

    ``forces_true``/``forces_pred`` are every system's (n_i, 3) forces stacked in system order,
    ``free`` the stacked free-atom mask and ``system`` the system index of each stacked atom.
    """
    return s2ef_terms_and_worst(energy_true, energy_pred, forces_true, forces_pred, free, system,
                                energy_threshold=energy_threshold, force_threshold=force_threshold)[0]


def s2ef_terms_and_worst(energy_true, energy_pred, forces_true, forces_pred, free, system, *,
                         energy_threshold=0.02, force_threshold=0.03) -> tuple[Terms, np.ndarray]:
    """``s2ef_terms``, and per system the largest free-atom force component error (the force
    half of EFwT, which the aligned EFwT reuses with its own energy error)."""
    et, ep = _check_energies(energy_true, energy_pred)
    n = et.size
    ft, fp = np.asarray(forces_true, dtype=float), np.asarray(forces_pred, dtype=float)
    free, system = np.asarray(free, dtype=bool), np.asarray(system, dtype=np.int64)
    if ft.shape != fp.shape or ft.ndim != 2 or ft.shape[1] != 3 or free.shape != ft.shape[:1] \
            or system.shape != free.shape:
        raise ValueError(f"stacked forces {ft.shape} and {fp.shape}, free {free.shape} and system {system.shape} "
                         "must be (n_atoms, 3), (n_atoms, 3), (n_atoms,) and (n_atoms,)")
    owner = system[free]
    ft, fp = ft[free], fp[free]
    df = np.abs(fp - ft)

    def per_system(values: np.ndarray) -> np.ndarray:
        return np.bincount(owner, weights=values, minlength=n)

    n_free = np.bincount(owner, minlength=n).astype(float)
    _require_free_atoms(n_free)
    cosine = force_cosine(fp, ft)
    magnitude = np.abs(np.linalg.norm(fp, axis=1) - np.linalg.norm(ft, axis=1))
    worst = np.zeros(n)  # max |dF_ic| over the system's free atoms (each system has one at least)
    np.maximum.at(worst, owner, df.max(axis=1))
    de = np.abs(ep - et)
    ones = np.ones(n)
    return {"energy_mae": (de, ones), "forces_mae": (per_system(df.sum(axis=1)), 3 * n_free),
            "forcesx_mae": (per_system(df[:, 0]), n_free), "forcesy_mae": (per_system(df[:, 1]), n_free),
            "forcesz_mae": (per_system(df[:, 2]), n_free), "forces_cosine_similarity": (per_system(cosine), n_free),
            "forces_magnitude_error": (per_system(magnitude), n_free),
            "energy_forces_within_threshold": (((de < energy_threshold) & (worst < force_threshold)).astype(float),
                                               ones)}, worst


def _stack(per_system: Sequence, width: int | None = 3) -> np.ndarray:
    """Per-system arrays stacked into one: rows of ``width``, or a flat vector for ``None``."""
    if not len(per_system):
        return np.zeros((0, width) if width else 0)
    return np.concatenate([np.asarray(x).reshape((-1, width) if width else -1) for x in per_system])


def s2ef_metrics(energy_true, energy_pred, forces_true, forces_pred, free, *,
                 energy_threshold=0.02, force_threshold=0.03) -> dict[str, Metric]:
    """S2EF metrics over free atoms.

    forces_mae = mean |dF| over free atoms x 3 components; forces{x,y,z}_mae per component;
    forces_cosine_similarity = mean_i dot(Fp_i, Ft_i) / (max(|Fp_i|, 1e-8) max(|Ft_i|, 1e-8)) in float32
    (``force_cosine``); forces_magnitude_error = mean_i | |Fp_i| - |Ft_i| |;
    EFwT = share of systems with |dE| < energy_threshold and max_{free i, c} |dF_ic| < force_threshold.
    A system without free atoms raises ValueError (its EFwT is undefined; fairchem raises too).
    """
    et, ep = _check_energies(energy_true, energy_pred)
    _check_atoms(et.size, ("forces_true", "forces_pred", "free"), forces_true, forces_pred, free)
    system = np.repeat(np.arange(et.size), [len(np.asarray(f)) for f in free])
    return totals(s2ef_terms(et, ep, _stack(forces_true), _stack(forces_pred), _stack(free, None), system,
                             energy_threshold=energy_threshold, force_threshold=force_threshold))


def min_image(diff: np.ndarray, cell: np.ndarray, pbc=(True, True, True)) -> np.ndarray:
    """Minimum-image displacement of (n, 3) vectors (or one (3,) vector): frac = solve(cell.T, diff),
    wrap the periodic axes into (-0.5, 0.5] (frac %= 1 twice so 1.0 maps to 0, then frac > 0.5 ->
    frac - 1), back to Cartesian as frac @ cell. ``cell`` is one (3, 3) cell or one per vector
    (n, 3, 3). A vector whose cell is all zeros (no cell), or all pbc False, is returned as is."""
    diff = np.asarray(diff, dtype=float)
    vecs = diff.reshape(-1, 3)
    cells = np.broadcast_to(np.asarray(cell, dtype=float).reshape(-1, 3, 3), (len(vecs), 3, 3))
    periodic = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    has_cell = cells.any(axis=(1, 2))
    out = vecs.copy()
    if periodic.any() and has_cell.any():
        own = cells[has_cell]
        frac = np.linalg.solve(np.swapaxes(own, 1, 2), vecs[has_cell][..., None])[..., 0]
        wrapped = frac % 1.0
        wrapped %= 1.0
        wrapped[wrapped > 0.5] -= 1.0
        frac[:, periodic] = wrapped[:, periodic]
        out[has_cell] = np.einsum("ni,nij->nj", frac, own)
    return out.reshape(diff.shape)


def adwt_curve(distances) -> tuple[np.ndarray, np.ndarray]:
    """(ADWT_THRESHOLDS, share of per-system distances d with d < t for each threshold t)."""
    d = np.asarray(distances, dtype=float).reshape(-1)
    if d.size == 0:
        return ADWT_THRESHOLDS.copy(), np.full(ADWT_THRESHOLDS.size, np.nan)
    return ADWT_THRESHOLDS.copy(), (d[:, None] < ADWT_THRESHOLDS[None, :]).mean(axis=0)


def is2rs_terms(pos_true, pos_pred, cells, free, system) -> Terms:
    """Per-system terms of the IS2RS metrics, on all atoms at once: its ADwT share over 1, and its
    |dx| and dx^2 sums over its free atoms x 3.

    ``pos_true``/``pos_pred`` are every system's (n_i, 3) positions stacked in system order, ``cells``
    the (n_sys, 3, 3) cells, ``free`` the stacked free-atom mask and ``system`` each atom's system.
    ADwT distances take the minimum image along all three cell vectors, whatever the data's pbc:
    fairchem's trainer scores IS2RS with pbc = [True, True, True] (an OC20 slab is stored with
    pbc (T, T, F), so an adsorbate moved by most of the cell height counts as moved by the rest).
    """
    pt, pp = np.asarray(pos_true, dtype=float), np.asarray(pos_pred, dtype=float)
    cells = np.asarray(cells, dtype=float)
    free, system = np.asarray(free, dtype=bool), np.asarray(system, dtype=np.int64)
    if pt.shape != pp.shape or pt.ndim != 2 or pt.shape[1] != 3 or free.shape != pt.shape[:1] \
            or system.shape != free.shape or cells.ndim != 3 or cells.shape[1:] != (3, 3):
        raise ValueError(f"stacked positions {pt.shape} and {pp.shape}, free {free.shape}, system {system.shape} "
                         f"and cells {cells.shape} must be (n_atoms, 3), (n_atoms, 3), (n_atoms,), (n_atoms,) "
                         "and (n_systems, 3, 3)")
    n = len(cells)
    owner = system[free]
    n_free = np.bincount(owner, minlength=n).astype(float)
    _require_free_atoms(n_free)
    raw = pp[free] - pt[free]
    dist = np.linalg.norm(min_image(raw, cells[owner]), axis=1)
    d = np.bincount(owner, weights=dist, minlength=n) / n_free
    # thresholds t with d < t: all but those <= d (the thresholds are sorted)
    passed = ADWT_THRESHOLDS.size - np.searchsorted(ADWT_THRESHOLDS, d, side="right")
    return {"average_distance_within_threshold": (passed / ADWT_THRESHOLDS.size, np.ones(n)),
            "positions_mae": (np.bincount(owner, weights=np.abs(raw).sum(axis=1), minlength=n), 3 * n_free),
            "positions_mse": (np.bincount(owner, weights=(raw ** 2).sum(axis=1), minlength=n), 3 * n_free)}


def is2rs_metrics(pos_true, pos_pred, cells, free) -> dict[str, Metric]:
    """IS2RS metrics over free atoms.

    ADwT, on minimum-image differences dp with every axis periodic (as fairchem's trainer scores
    it): d_s = mean_i |dp_i| per system; total = sum_s #{t : d_s < t} / 490, numel = #systems.
    positions_mae / positions_mse = mean |x_pred - x_true| / its square over free atoms x 3
    components, on raw (unwrapped) differences, as fairchem's evaluator computes them.
    A system without free atoms raises ValueError (its distance is undefined).
    """
    n_sys = len(pos_true)
    _check_atoms(n_sys, ("pos_true", "pos_pred", "free"), pos_true, pos_pred, free)
    if len(cells) != n_sys:
        raise ValueError(f"cells has {len(cells)} systems, expected {n_sys}")
    for i, cell in enumerate(cells):
        if np.asarray(cell).size != 9:
            raise ValueError(f"system {i}: cell has {np.asarray(cell).size} numbers, expected a (3, 3) cell")
    system = np.repeat(np.arange(n_sys), [len(np.asarray(f)) for f in free])
    return totals(is2rs_terms(_stack(pos_true), _stack(pos_pred), np.reshape(np.asarray(cells, float), (-1, 3, 3)),
                              _stack(free, None), system))
