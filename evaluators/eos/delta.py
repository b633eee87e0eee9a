"""Birch–Murnaghan fits and the Δ gauge, as the Δ project's calcDelta defines them (pure numpy).

Fit: E is a cubic polynomial in x = V^(-2/3) (least squares over the points). The equilibrium is
the root x0 of E'(x) where E''(x0) > 0, and it must lie inside the fitted volumes (a minimum
extrapolated outside them is a failure, not a number). Then

    V0 = x0^(-3/2)
    B0 = (4/9) x0^(7/2) E''(x0)
    B1 = -1 - x0^(-3/2) E_VVV / E_VV,  E_VV = (4/9) x0^5 E''(x0),
         E_VVV = -(20/9) x0^(13/2) E''(x0) - (8/27) x0^(15/2) E'''(x0).

The polynomial is fitted in t = (x - mid) / half-width, which spans [-1, 1]: the same
least-squares cubic as in x, but well conditioned (x spans only ~8 % around its centre).

Δ (meV/atom) between two equations of state (V0, B0, B1): each curve's third-order BM energy
with its minimum at 0, Δ = sqrt(∫ (E1 - E2)² dV / (Vf - Vi)) over Vi, Vf = 0.94, 1.06 times the
mean of the two V0. The integral is taken by 32-point Gauss-Legendre quadrature of the BM energy
written in η = (V0/V)^(2/3) - 1 (free of the cancellation of the expanded polynomial): the
integrand is smooth on a ±6 % interval, so the rule is exact to round-off (the tests check it
against adaptive quadrature and 40-digit arithmetic to 1e-12 relative; calcDelta's analytic
antiderivative of the expanded polynomial agrees to ~1e-9, the digits its cancellation loses).

Everything works on arrays of curves at once (the bootstrap refits 71 elements per resample).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EV_PER_A3_IN_GPA = 160.21766208  # 1 eV/Å³ in GPa (CODATA 2014, as ase.units)
DELTA_WINDOW = (0.94, 1.06)  # calcDelta's integration window, times the mean V0 of the two curves
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(32)


# A curve whose energies span less than this (eV/atom) over its volumes is flat: the model sees no
# change (every neighbour beyond its cutoff, as Cs's 5.3 Å bonds for a 5 Å model). Its cubic would
# fit round-off: a float32 energy of a few eV is resolved to ~1e-7 eV, and an exactly flat curve
# gives V0, B0, B1 that change with the CPU's summation order. Real soft solids span far more
# over ±6 % of volume (WIEN2k Cs ~2.5e-3 eV/atom, Rn ~6e-4).
FLAT_SPAN = 1e-5


class EOSFitError(ValueError):
    """An energy-volume curve has no Birch–Murnaghan minimum inside its volumes (or is malformed)."""


@dataclass(frozen=True)
class BMFit:
    v0: float  # Å³/atom
    b0: float  # GPa
    b1: float


@dataclass(frozen=True)
class BMFits:
    """Fits of many curves: NaN where ``reasons`` holds why a curve has no fit."""

    v0: np.ndarray
    b0: np.ndarray
    b1: np.ndarray
    reasons: list[str | None]

    @property
    def ok(self) -> np.ndarray:
        return np.array([r is None for r in self.reasons], dtype=bool)


def fit_birch_murnaghan_many(volumes, energies) -> BMFits:
    """Fit each row of ``volumes`` (Å³/atom) and ``energies`` (eV/atom), shape (n_curves, n_points)."""
    v = np.asarray(volumes, dtype=float)
    e = np.asarray(energies, dtype=float)
    if v.ndim != 2 or v.shape != e.shape:
        raise ValueError(f"volumes and energies must both be (curves, points), got {v.shape} and {e.shape}")
    n, m = v.shape
    nan = np.full(n, np.nan)
    if n == 0:
        return BMFits(nan, nan, nan, [])
    if m < 4:
        raise ValueError(f"a cubic fit needs at least 4 points per curve, got {m}")
    bad = ~(np.isfinite(v).all(axis=1) & np.isfinite(e).all(axis=1) & (v > 0).all(axis=1))
    v = np.where(bad[:, None], 1.0 + np.arange(m), v)  # placeholder rows, discarded below
    e = np.where(bad[:, None], 0.0, e)

    x = v ** (-2.0 / 3.0)
    lo, hi = x.min(axis=1), x.max(axis=1)
    mid, half = (hi + lo) / 2, (hi - lo) / 2
    bad |= ~(half > 0)
    half = np.where(half > 0, half, 1.0)
    t = (x - mid[:, None]) / half[:, None]
    bad |= (np.diff(np.sort(t, axis=1), axis=1) > 1e-9).sum(axis=1) < 3  # a cubic needs 4 distinct volumes
    span = np.ptp(e, axis=1)
    flat = ~bad & (span < FLAT_SPAN)
    bad |= flat
    # E(t) = c0 + c1 t + c2 t² + c3 t³ by least squares; with t in [-1, 1] the normal equations
    # are well conditioned, and solving them for all curves at once is cheap.
    vander = t[:, :, None] ** np.arange(4)
    gram = np.einsum("nmi,nmj->nij", vander, vander)
    gram[bad] = np.eye(4)
    c = np.linalg.solve(gram, np.einsum("nmi,nm->ni", vander, e)[:, :, None])[:, :, 0]
    c0, c1, c2, c3 = c.T

    # E'(t) = 3c3 t² + 2c2 t + c1: of its (at most two) roots, the one with E''(t) > 0 is
    # t0 = -2c1 / (2c2 + sqrt(D)), D = 4c2² - 12 c1 c3, where E''(t0) = sqrt(D) (also when c3 = 0).
    disc = 4 * c2**2 - 12 * c1 * c3
    denom = 2 * c2 + np.sqrt(np.maximum(disc, 0.0))
    has_min = (disc > 0) & (denom > 0)
    t0 = np.where(has_min, -2 * c1 / np.where(has_min, denom, 1.0), np.nan)
    inside = has_min & (np.abs(t0) <= 1.0)

    x0 = mid + half * t0
    d2 = (2 * c2 + 6 * c3 * t0) / half**2  # E''(x0)
    d3 = 6 * c3 / half**3  # E'''(x0)
    with np.errstate(invalid="ignore", divide="ignore"):
        v0 = x0 ** -1.5
        b0 = 4.0 / 9.0 * x0**3.5 * d2
        e_vv = 4.0 / 9.0 * x0**5 * d2
        e_vvv = -20.0 / 9.0 * x0**6.5 * d2 - 8.0 / 27.0 * x0**7.5 * d3
        b1 = -1.0 - x0**-1.5 * e_vvv / e_vv

    ok = ~bad & inside & np.isfinite(b1) & (b0 > 0)
    reasons: list[str | None] = [None] * n
    for i in np.flatnonzero(~ok):
        if flat[i]:
            reasons[i] = (f"flat: the energies span {span[i]:.2g} eV/atom over the computed volumes, under the "
                          f"{FLAT_SPAN:g} eV/atom a fit resolves above round-off (the model sees no change, e.g. "
                          "every neighbour beyond its cutoff)")
        elif bad[i]:
            reasons[i] = "energies or volumes are not finite and positive, or fewer than 4 volumes differ"
        elif not has_min[i]:
            reasons[i] = "the fitted E(V) has no minimum (E'(x) has no root with E''(x) > 0)"
        elif not inside[i]:
            side = "below" if x0[i] > hi[i] else "above"
            reasons[i] = (f"the fitted minimum V0 = {v0[i]:.4g} Å³/atom lies {side} the computed volumes "
                          f"[{v[i].min():.4g}, {v[i].max():.4g}] (extrapolated, not fitted)")
        else:
            reasons[i] = f"the fit gives no finite positive bulk modulus (B0 = {b0[i] * EV_PER_A3_IN_GPA:.4g} GPa)"
    return BMFits(np.where(ok, v0, np.nan), np.where(ok, b0 * EV_PER_A3_IN_GPA, np.nan), np.where(ok, b1, np.nan),
                  reasons)


def fit_birch_murnaghan(volumes, energies) -> BMFit:
    """The fit of one curve; raises ``EOSFitError`` with the reason when it has none."""
    fits = fit_birch_murnaghan_many(np.asarray(volumes, float)[None], np.asarray(energies, float)[None])
    if fits.reasons[0] is not None:
        raise EOSFitError(fits.reasons[0])
    return BMFit(float(fits.v0[0]), float(fits.b0[0]), float(fits.b1[0]))


def birch_murnaghan_energy(volume, v0, b0, b1):
    """Third-order BM energy (eV/atom) with its minimum, at ``v0`` (Å³/atom), equal to 0; ``b0`` in GPa."""
    volume, v0, b0, b1 = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (volume, v0, b0, b1)))
    eta = (v0 / volume) ** (2.0 / 3.0) - 1.0
    return 9.0 * v0 * (b0 / EV_PER_A3_IN_GPA) / 16.0 * eta**2 * (eta * b1 + 2.0 - 4.0 * eta)


def delta(v0_a, b0_a, b1_a, v0_b, b0_b, b1_b, window: tuple[float, float] = DELTA_WINDOW):
    """Δ in meV/atom between curves a and b (V0 Å³/atom, B0 GPa, B1) over ``window`` times their mean
    V0; arrays give one Δ per pair."""
    args = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (v0_a, b0_a, b1_a, v0_b, b0_b, b1_b)))
    v0_a, b0_a, b1_a, v0_b, b0_b, b1_b = args
    mean_v0 = (v0_a + v0_b) / 2
    vi, vf = window[0] * mean_v0, window[1] * mean_v0
    # quadrature nodes along a trailing axis: V = mid + half * node
    vol = ((vf + vi) / 2)[..., None] + ((vf - vi) / 2)[..., None] * _NODES
    diff = (birch_murnaghan_energy(vol, v0_a[..., None], b0_a[..., None], b1_a[..., None])
            - birch_murnaghan_energy(vol, v0_b[..., None], b0_b[..., None], b1_b[..., None]))
    mean_square = (diff**2 @ _WEIGHTS) / 2  # ∫ over [Vi, Vf] / (Vf - Vi): the half-width cancels
    return 1000.0 * np.sqrt(mean_square)
