"""Metrics of one dimer curve: smoothness of the model's own curve, and its errors against a
reference curve sampled at the same separations.

The definitions follow matbench-discovery's diatomic metrics (``matbench_discovery/metrics/
diatomics/``, MIT, commit 2c7f9fc), which credit Tamas Stenczel's MACE-MP analysis and Yuan
Chiang's MLIP Arena. Curves are numpy arrays sorted by ascending separation; forces have shape
``(n_points, 2, 3)``, atom 0 at the origin and atom 1 on +x, so the bond force is ``forces[:, 0, 0]``.
"""

from __future__ import annotations

import numpy as np
from ase.data import atomic_masses, atomic_numbers, covalent_radii, vdw_alvarez

AMU_KG = 1.66053906660e-27
EV_PER_A2_IN_N_PER_M = 16.02176634
C_CM_PER_S = 2.99792458e10


def window(element: str, r_far: float, covalent_factor: float, vdw_factor: float) -> tuple[float, float]:
    """The scored separations ``[covalent_factor * r_cov, min(vdw_factor * r_vdw, r_far)]``
    (ASE's covalent radii and Alvarez's van der Waals radii; no vdW radius: up to ``r_far``)."""
    z = atomic_numbers[element]
    vdw = vdw_alvarez.vdw_radii
    r_vdw = vdw[z] if z < len(vdw) else np.nan
    r_max = min(vdw_factor * r_vdw, r_far) if np.isfinite(r_vdw) else r_far
    return covalent_factor * covalent_radii[z], r_max


# ---------------------------------------------------------------------------------------------
# Smoothness: the model's curve alone


def _steps(values: np.ndarray, flat: float) -> np.ndarray:
    """Consecutive differences, those smaller than ``flat`` dropped (noise, not a direction)."""
    steps = np.diff(values)
    return steps[np.abs(steps) >= flat] if flat > 0 else steps[steps != 0]


def _turns(steps: np.ndarray) -> np.ndarray:
    """Where the direction of consecutive (non-flat) steps reverses: mask over steps[:-1]."""
    return np.sign(steps[1:]) != np.sign(steps[:-1])


def tortuosity(energies: np.ndarray) -> float:
    """Total variation of E over the shortest monotone path through the minimum,
    ``sum |dE| / (|E_first - E_min| + |E_last - E_min|)``: 1 for one well or a pure wall."""
    direct = abs(energies[0] - energies.min()) + abs(energies[-1] - energies.min())
    return float(np.abs(np.diff(energies)).sum() / direct) if direct > 0 else np.nan


def energy_diff_flips(energies: np.ndarray, flat: float) -> float:
    """How often the energy turns from rising to falling or back (steps below ``flat`` ignored)."""
    return float(_turns(_steps(energies, flat)).sum())


def energy_jump(energies: np.ndarray, flat: float) -> float:
    """Sum of |dE| of the two steps at every turn of the energy (eV)."""
    steps = _steps(energies, flat)
    turns = _turns(steps)
    return float(np.abs(steps[:-1][turns]).sum() + np.abs(steps[1:][turns]).sum())


def force_flips(bond_force: np.ndarray, flat: float) -> float:
    """How often the bond force changes sign (attractive <-> repulsive), forces below ``flat``
    counted as zero and skipped. A physical curve has one flip, at the minimum."""
    signs = np.sign(bond_force[np.abs(bond_force) >= flat])
    return float((signs[1:] != signs[:-1]).sum())


def force_total_variation(bond_force: np.ndarray) -> float:
    """``sum |dF|`` along the curve (eV/Å)."""
    return float(np.abs(np.diff(bond_force)).sum())


def force_jump(bond_force: np.ndarray) -> float:
    """Sum of |dF| of the two steps at every turn of the bond force (eV/Å)."""
    steps = _steps(bond_force, 0.0)
    turns = _turns(steps)
    return float(np.abs(steps[:-1][turns]).sum() + np.abs(steps[1:][turns]).sum())


# ---------------------------------------------------------------------------------------------
# Against the reference (same separations)


def _on_uniform_grid(seps: np.ndarray, n: int, *curves: np.ndarray) -> list[np.ndarray]:
    """Each curve linearly interpolated onto ``n`` evenly spaced separations, so every Å of the
    curve weighs the same whatever the sampling (the grid is geometric, dense at the wall)."""
    grid = np.linspace(seps[0], seps[-1], n)
    out = []
    for curve in curves:
        flat = curve.reshape(len(seps), -1)
        out.append(np.stack([np.interp(grid, seps, flat[:, j]) for j in range(flat.shape[1])], axis=1))
    return out


def energy_mae(seps: np.ndarray, e_ref: np.ndarray, e_pred: np.ndarray, n_grid: int) -> float:
    """MAE of the two curves after each is shifted to 0 at its largest separation (dissociation),
    so the model's own zero of energy does not count (eV)."""
    ref, pred = _on_uniform_grid(seps, n_grid, e_ref, e_pred)
    return float(np.mean(np.abs((pred - pred[-1]) - (ref - ref[-1]))))


def force_mae(seps: np.ndarray, f_ref: np.ndarray, f_pred: np.ndarray, n_grid: int) -> float:
    """MAE over every force component of both atoms (eV/Å). y and z are zero for both curves of
    a symmetric model, so this is about a third of the bond-force error, as in the reference."""
    ref, pred = _on_uniform_grid(seps, n_grid, f_ref, f_pred)
    return float(np.mean(np.abs(pred - ref)))


def well_depth(energies: np.ndarray) -> float:
    """``E(largest separation) - E_min`` (eV)."""
    return float(energies[-1] - energies.min())


def quadratic_well(seps: np.ndarray, energies: np.ndarray, n_fit: int = 5) -> tuple[float, float]:
    """Equilibrium separation and curvature d2E/dr2 from a parabola through the ``n_fit`` points
    around the lowest one. The parabola's vertex is used when it lies within those points, else
    the lowest point itself; the curvature is NaN when the fit is not convex."""
    low = int(np.argmin(energies))
    start = min(max(0, low - n_fit // 2), max(0, len(seps) - n_fit))
    x, y = seps[start:start + n_fit], energies[start:start + n_fit]
    if len(x) < 3:
        return float(seps[low]), np.nan
    a, b, _ = np.polyfit(x, y, 2)
    if a <= 0:
        return float(seps[low]), np.nan
    vertex = -b / (2 * a)
    return (float(vertex) if x[0] <= vertex <= x[-1] else float(seps[low])), float(2 * a)


def wavenumber(element: str, curvature: float) -> float:
    """Harmonic wavenumber (cm^-1) of X2 with force constant ``curvature`` (eV/Å^2)."""
    if not np.isfinite(curvature) or curvature <= 0:
        return np.nan
    reduced_mass = atomic_masses[atomic_numbers[element]] * AMU_KG / 2
    omega = np.sqrt(curvature * EV_PER_A2_IN_N_PER_M / reduced_mass)
    return float(omega / (2 * np.pi * C_CM_PER_S))


def wall_radius(seps: np.ndarray, energies: np.ndarray, height: float) -> float:
    """Separation at which the repulsive wall, walked inward from the minimum, first reaches
    ``height`` eV above the minimum (linear interpolation); NaN if it never does."""
    low = int(np.argmin(energies))
    if low == 0:
        return np.nan
    inward_r = seps[low::-1]
    climbed = np.maximum.accumulate(energies[low::-1] - energies[low])  # bumps on the way do not count twice
    levels, first = np.unique(climbed, return_index=True)
    if len(levels) < 2 or height > levels[-1]:
        return np.nan
    return float(np.interp(height, levels, inward_r[first]))


def wall_dist_mae(seps: np.ndarray, e_ref: np.ndarray, e_pred: np.ndarray, heights: list[float]) -> float:
    """Mean |r_pred - r_ref| of the wall radii at each height the reference reaches (Å). A model
    whose wall never reaches that height scores the whole reference radius there."""
    errors = []
    for height in heights:
        r_ref = wall_radius(seps, e_ref, height)
        if np.isfinite(r_ref):
            r_pred = wall_radius(seps, e_pred, height)
            errors.append(abs(r_pred - r_ref) if np.isfinite(r_pred) else r_ref)
    return float(np.mean(errors)) if errors else np.nan
