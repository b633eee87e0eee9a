r"""A conformance kit for interatomic potentials: what any physical model must satisfy, checked
on real structures, with each failure named and sized.

It works on an mlip-zoo ``Potential`` or on any ASE ``Calculator``, so a model author can run it
in their own CI with one line::

    from mlip_zoo.zoo.conformance import Tolerances, assert_conformant

    def test_my_model_is_conformant():
        assert_conformant(MyCalculator(), tolerances=Tolerances.float32())

Every check returns a :class:`CheckResult`: the check's name, the *relative* errors it measured
(one list per quantity, one value per trial), the named tolerance it was held to, and whether it
passed. The same checks drive the ``symmetry`` task (which reports the errors as metrics rather
than judging them) and the smoke check behind ``mlipzoo models check``.

The checks, for a structure :math:`x` (positions, cell) with :math:`N` atoms, energy :math:`E`,
forces :math:`F \in \mathbb{R}^{N\times 3}` and stress :math:`\sigma \in \mathbb{R}^{3\times 3}`:

``shapes``, ``finite``, ``no_mutation``
    forces are :math:`N\times 3`, stress has 6 Voigt components, nothing is NaN or infinite, and the
    structure passed in keeps its positions, cell, numbers, pbc and arrays.
``net_force``
    :math:`\lVert\sum_i F_i\rVert \le` ``tolerances.net_force`` (eV/Å, absolute): translation
    invariance of :math:`E` makes the net force vanish, periodic or not.
``rotation``
    for random rotations :math:`R` (``e3nn.o3.rand_matrix``), with :math:`Rx` rotating positions
    *and* cell,

    .. math::
        \epsilon_E = \frac{|E(Rx) - E(x)|}{|E(x)|},\quad
        \epsilon_F = \frac{\lVert F(Rx) - F(x) R^\top\rVert}{\lVert F(x)\rVert},\quad
        \epsilon_{\sigma,l} = \frac{\lVert \sigma_l(Rx) - D^l(R)\,\sigma_l(x)\rVert}{\lVert\sigma(x)\rVert}

    where :math:`\sigma_0` (1 component, the pressure part, ``0e``) and :math:`\sigma_2` (5
    components, the deviatoric part, ``2e``) are the irreducible parts of the symmetric stress
    from ``e3nn.io.CartesianTensor("ij=ji")`` and :math:`D^l` their Wigner matrices. Splitting
    them tells an error in the pressure (which must be invariant) from one in the shear.
``translation``
    the same three errors for :math:`x + t` (a random :math:`t` of fixed length), wrapped back into
    the cell along periodic axes so atoms cross the cell boundary; :math:`F` and :math:`\sigma`
    must be unchanged.
``permutation``
    :math:`E(Px) = E(x)`, :math:`F(Px) = P F(x)`, :math:`\sigma(Px) = \sigma(x)` for a random
    reordering :math:`P` of the atoms.
``supercell``
    the :math:`n_1\times n_2\times n_3` supercell :math:`S` (repeated along periodic axes only) has
    the same energy per atom, the same forces on every image and the same stress:
    :math:`|E(S)/N_S - E/N| / |E/N|`, :math:`\lVert F(S) - \mathrm{tile}(F)\rVert/\lVert\mathrm{tile}(F)\rVert`,
    :math:`\lVert\sigma(S)-\sigma\rVert/\lVert\sigma\rVert`. Skipped for a structure with no
    periodic axis.
``finite_difference``
    forces are minus the gradient of the energy. For a seeded choice of components
    :math:`(i, \alpha)`, the central difference of order 4 (or 2) with step :math:`h`,

    .. math::
        F^{\mathrm{fd}}_{i\alpha} = -\frac{-E(x+2h) + 8E(x+h) - 8E(x-h) + E(x-2h)}{12h},

    is compared with the model's force, relative to the structure's rms force component:
    :math:`|F^{\mathrm{fd}}_{i\alpha} - F_{i\alpha}| / (\lVert F\rVert/\sqrt{3N})`.
    A finite step cannot reach round-off: the 4th-order stencil's truncation error is
    :math:`h^4 |\partial^5 E|/30` and its round-off :math:`\approx 1.5\,\varepsilon|E|/h`. For a
    float64 model (EMT) at the default :math:`h = 3\cdot10^{-3}` Å this measures ~1e-9 of the rms
    force (1e-10 at :math:`10^{-3}` Å, but 2e-8 with the 2nd-order stencil even at
    :math:`10^{-4}` Å, which is why the default is 4th order). A float32 model's energy carries
    :math:`\varepsilon \approx 6\cdot10^{-8}` relative round-off, so with :math:`|E| \sim 30` eV
    the floor is :math:`\sim 10^{-3}` eV/Å, i.e. :math:`10^{-3}` relative at :math:`h = 3\cdot10^{-3}`
    Å (SevenNet-0 and CHGNet measure 2-7e-3, ~1e-2 at :math:`10^{-3}` Å): a larger step trades
    EMT's truncation error for float32 round-off, and a float32 model is judged against
    :meth:`Tolerances.float32`.
``nve``
    energy conservation in a short NVE run: pre-relax positions (LBFGS), draw Maxwell-Boltzmann
    velocities (seeded, no net momentum), integrate with velocity Verlet and record the total energy
    per atom every step. The drift (fairchem v2's NVE-MD reducer) drops the first 10% of the
    samples, smooths with a 20-point moving average and reports
    :math:`1000\,|\bar E_\mathrm{end} - \bar E_\mathrm{start}| / \Delta t` in meV/atom/ps
    (:func:`nve_drift`). It is not relative: even an exact model drifts with a finite time step.

A relative error divides by the size of the reference quantity, floored at
``ENERGY_FLOOR`` eV/atom, ``FORCE_FLOOR`` eV/Å per atom and ``STRESS_FLOOR`` eV/Å³ so that a
quantity that happens to be ~0 (an energy zero near the structure, an unstressed cell) does not
turn round-off into a huge ratio. Structures should be rattled so forces are far above the floor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator

from mlip_zoo.errors import ConformanceError
# The kit's vocabulary and the basic checks live in conformance_base; everything is imported from here.
from mlip_zoo.zoo.conformance_base import (  # noqa: F401
    ALL_CHECKS,
    BASIC_CHECKS,
    DEFAULT_PROTOCOL,
    ENERGY_FLOOR,
    FORCE_FLOOR,
    STRESS_FLOOR,
    SYMMETRY_CHECKS,
    CheckResult,
    ConformanceReport,
    Model,
    NVEProtocol,
    Output,
    Protocol,
    StressIrreps,
    Tolerances,
    _compare_invariant,
    _energy_rel,
    _plain,
    _rel,
    _stress_full,
    _stress_irreps,
    basic_checks,
    evaluate,
    model_name,
    random_rotations,
)
from mlip_zoo.zoo.potential import Potential
from mlip_zoo.zoo.structures import structure_label

__all__ = [  # the kit's public names, those of conformance_base included
    "ALL_CHECKS", "BASIC_CHECKS", "DEFAULT_PROTOCOL", "ENERGY_FLOOR", "FORCE_FLOOR", "STRESS_FLOOR", "SYMMETRY_CHECKS",
    "CheckResult", "ConformanceReport", "Model", "NVEProtocol", "Output", "Protocol", "StressIrreps", "Tolerances",
    "assert_conformant", "basic_checks", "check_finite_difference", "check_nve", "check_permutation", "check_rotation",
    "check_supercell", "check_translation", "evaluate", "model_name", "nve_drift", "random_rotations", "run_checks",
    "run_nve", "standard_cells",
]


# ---------------------------------------------------------------------------------------------
# The symmetry checks and NVE


def check_rotation(model: Model, atoms: Atoms, ref: Output, protocol: Protocol = DEFAULT_PROTOCOL,
                   tolerance: float = Tolerances.rotation) -> CheckResult:
    """Energy invariance, force equivariance, stress 0e invariance and 2e equivariance under
    ``protocol.n_rotations`` random rotations of positions and cell."""
    result = CheckResult("rotation", structure_label(atoms, 0), tolerance=tolerance)
    irreps = _stress_irreps() if ref.stress is not None else None
    n = len(atoms)
    for R in random_rotations(protocol.n_rotations, protocol.seed):
        rotated = _plain(atoms)
        rotated.positions = atoms.positions @ R.T
        rotated.set_cell(atoms.cell.array @ R.T, scale_atoms=False)
        new = evaluate(model, rotated)
        expected_forces = ref.forces @ R.T
        result.errors.setdefault("energy", []).append(_energy_rel(new.energy, ref.energy, n))
        result.errors.setdefault("forces", []).append(
            _rel(new.forces - expected_forces, expected_forces, math.sqrt(n) * FORCE_FLOOR))
        result.detail.setdefault("forces_abs_max", []).append(
            float(np.linalg.norm(new.forces - expected_forces, axis=1).max()))
        if irreps is not None and new.stress is not None:
            s_ref, s_new, D = irreps.split(ref.stress), irreps.split(new.stress), irreps.wigner(R)
            norm = max(float(np.linalg.norm(s_ref)), STRESS_FLOOR)
            diff = s_new - D @ s_ref
            for name, sl in irreps.slices.items():
                result.errors.setdefault(f"stress_{name}", []).append(float(np.linalg.norm(diff[sl])) / norm)
    return result


def check_translation(model: Model, atoms: Atoms, ref: Output, protocol: Protocol = DEFAULT_PROTOCOL,
                      tolerance: float = Tolerances.translation) -> CheckResult:
    """E, F and sigma unchanged when every atom moves by the same random vector (wrapped back
    into the cell along periodic axes)."""
    result = CheckResult("translation", structure_label(atoms, 0), tolerance=tolerance)
    rng = np.random.default_rng([protocol.seed, 1])
    t = rng.normal(size=3)
    moved = _plain(atoms)
    moved.positions = atoms.positions + protocol.translation * t / np.linalg.norm(t)
    if moved.pbc.any():
        moved.wrap()
    _compare_invariant(result, ref, evaluate(model, moved), len(atoms), ref.forces)
    return result


def check_permutation(model: Model, atoms: Atoms, ref: Output, protocol: Protocol = DEFAULT_PROTOCOL,
                      tolerance: float = Tolerances.permutation) -> CheckResult:
    """E and sigma unchanged, F permuted with the atoms, under a random reordering."""
    result = CheckResult("permutation", structure_label(atoms, 0), tolerance=tolerance)
    perm = np.random.default_rng([protocol.seed, 2]).permutation(len(atoms))
    shuffled = _plain(atoms)[perm]
    _compare_invariant(result, ref, evaluate(model, shuffled), len(atoms), ref.forces[perm])
    return result


def check_supercell(model: Model, atoms: Atoms, ref: Output, protocol: Protocol = DEFAULT_PROTOCOL,
                    tolerance: float = Tolerances.supercell) -> CheckResult:
    """The supercell (repeated along periodic axes) has the same energy per atom, forces on every
    image, and stress."""
    result = CheckResult("supercell", structure_label(atoms, 0), tolerance=tolerance)
    reps = tuple(int(r) if p else 1 for r, p in zip(protocol.supercell, atoms.pbc))
    if not atoms.pbc.any():
        result.skipped = "no periodic axis"
        return result
    big = _plain(atoms).repeat(reps)
    new = evaluate(model, big)
    n, k = len(atoms), int(np.prod(reps))
    result.detail["repeat"] = list(reps)
    result.errors["energy"] = [_energy_rel(new.energy / k, ref.energy, n)]
    tiled = np.tile(ref.forces, (k, 1))  # ase's repeat stacks whole copies of the cell
    result.errors["forces"] = [_rel(new.forces - tiled, tiled, math.sqrt(n * k) * FORCE_FLOOR)]
    if ref.stress is not None and new.stress is not None:
        result.errors["stress"] = [_rel(_stress_full(new.stress) - _stress_full(ref.stress),
                                        _stress_full(ref.stress), STRESS_FLOOR)]
    return result


_STENCILS = {2: ((-1, 1), (-0.5, 0.5)), 4: ((-2, -1, 1, 2), (1 / 12, -8 / 12, 8 / 12, -1 / 12))}


def check_finite_difference(model: Model, atoms: Atoms, ref: Output, protocol: Protocol = DEFAULT_PROTOCOL,
                            tolerance: float = Tolerances.finite_difference) -> CheckResult:
    """Forces against minus the central finite-difference gradient of the energy, on
    ``protocol.fd_components`` seeded components, relative to the rms force component."""
    result = CheckResult("finite_difference", structure_label(atoms, 0), tolerance=tolerance)
    n = len(atoms)
    rng = np.random.default_rng([protocol.seed, 3])
    picks = rng.choice(3 * n, size=min(protocol.fd_components, 3 * n), replace=False)
    offsets, weights = _STENCILS[protocol.fd_order]
    h = protocol.fd_step
    rms = max(float(np.linalg.norm(ref.forces)) / math.sqrt(3 * n), FORCE_FLOOR)
    comps = []
    for flat in sorted(int(p) for p in picks):
        i, axis = divmod(flat, 3)
        grad = 0.0
        for k, w in zip(offsets, weights):
            moved = _plain(atoms)
            moved.positions[i, axis] += k * h
            grad += w * evaluate(model, moved).energy
        fd = -grad / h
        comps.append({"atom": i, "axis": "xyz"[axis], "fd": fd, "model": float(ref.forces[i, axis])})
        result.errors.setdefault("forces", []).append(abs(fd - ref.forces[i, axis]) / rms)
    result.detail["components"] = comps
    return result


def nve_drift(times_ps: Sequence[float], energy_per_atom: Sequence[float], drop_fraction: float = 0.1,
              window: int = 20) -> float:
    """Total-energy drift of an NVE trajectory in meV/atom/ps, as fairchem v2's NVE-MD reducer
    defines it: drop the first ``int(drop_fraction * n)`` samples, take the moving average over
    ``window`` points (windows ``x[k:k+window]`` for ``k < len(x) - window``, as the reducer
    builds them), and divide the change between its first and last value by the time between the
    first kept sample and the last sample: ``1000 * |Ē[-1] - Ē[0]| / (t[-1] - t[start])``.

    (The reducer's first published version compared against the smoothed series at index
    ``start`` instead of 0, an indexing slip fixed later; this follows the fixed definition.)
    """
    t = np.asarray(times_ps, dtype=np.float64)
    e = np.asarray(energy_per_atom, dtype=np.float64)
    start = int(len(e) * drop_fraction)
    kept = e[start:]
    if len(kept) <= window:
        raise ValueError(f"an NVE trace of {len(e)} samples keeps {len(kept)} after dropping {drop_fraction:.0%}, "
                         f"too few for a {window}-point moving average; run more steps")
    smooth = np.stack([kept[i:len(kept) - (window - i)] for i in range(window)]).mean(axis=0)
    duration = t[-1] - t[start]
    return float(1000.0 * abs(smooth[-1] - smooth[0]) / duration)


def run_nve(model: Model, atoms: Atoms, protocol: Protocol = DEFAULT_PROTOCOL) -> dict:
    """Pre-relax, then integrate; returns the trace the drift is computed from:
    ``{"times_ps", "energy_per_atom", "prerelax_steps", "prerelax_converged"}``."""
    from ase import units
    from ase.md import velocitydistribution as vd
    from ase.md.verlet import VelocityVerlet
    from ase.optimize import LBFGS

    p = protocol.nve
    system = _plain(atoms)
    system.calc = model.as_calculator() if isinstance(model, Potential) else model
    if isinstance(model, Calculator):
        model.reset()
    opt = LBFGS(system, logfile=None)
    converged = bool(opt.run(fmax=p.prerelax_fmax, steps=p.prerelax_steps))
    rng = np.random.default_rng([protocol.seed, 4])
    if hasattr(vd, "thermalize_momenta"):  # ASE >= 3.29 renamed MaxwellBoltzmannDistribution (same draw)
        vd.thermalize_momenta(system, p.temperature_K, rng=rng)
    else:
        vd.MaxwellBoltzmannDistribution(system, temperature_K=p.temperature_K, rng=rng)
    vd.Stationary(system)
    if not system.pbc.any():
        vd.ZeroRotation(system)  # an isolated cluster: no rigid rotation either
    n = len(system)
    energies: list[float] = []
    dyn = VelocityVerlet(system, timestep=p.timestep_fs * units.fs, logfile=None)
    dyn.attach(lambda: energies.append(float(system.get_total_energy()) / n), interval=1)
    dyn.run(p.steps)
    times = [i * p.timestep_fs / 1000.0 for i in range(len(energies))]
    return {"times_ps": times, "energy_per_atom": energies, "prerelax_steps": int(opt.nsteps),
            "prerelax_converged": converged}


def check_nve(model: Model, atoms: Atoms, protocol: Protocol = DEFAULT_PROTOCOL,
              tolerance: float = Tolerances.nve_drift) -> CheckResult:
    """Energy drift of a short NVE run (meV/atom/ps); the trace is kept in ``detail``."""
    result = CheckResult("nve", structure_label(atoms, 0), tolerance=tolerance, unit="meV/atom/ps")
    trace = run_nve(model, atoms, protocol)
    result.detail.update(trace)
    result.errors["drift"] = [nve_drift(trace["times_ps"], trace["energy_per_atom"], protocol.nve.drop_fraction,
                                        protocol.nve.window)]
    return result


_CHECKS: dict[str, Callable[..., CheckResult]] = {
    "rotation": check_rotation, "translation": check_translation, "permutation": check_permutation,
    "supercell": check_supercell, "finite_difference": check_finite_difference,
}


def run_checks(model: Model, atoms: Atoms, *, protocol: Protocol = DEFAULT_PROTOCOL,
               tolerances: Tolerances = Tolerances(), checks: Iterable[str] = ALL_CHECKS) -> ConformanceReport:
    """Run the named checks on one structure. A model that raises during a check raises
    ``ConformanceError`` naming the check and the structure."""
    checks = list(checks)
    unknown = sorted(set(checks) - set(ALL_CHECKS))
    if unknown:
        raise ValueError(f"unknown conformance checks {unknown}; known: {', '.join(ALL_CHECKS)}")
    label = structure_label(atoms, 0)

    def guarded(name, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConformanceError:
            raise
        except Exception as exc:
            raise ConformanceError(f"{model_name(model)} raised during the {name} check on structure {label}: "
                                   f"{type(exc).__name__}: {exc}", structure=label) from exc

    ref, basic = guarded("basic", basic_checks, model, atoms, tolerances)
    results = [c for c in basic if c.name in checks]
    for name in SYMMETRY_CHECKS:
        if name in checks:
            results.append(guarded(name, _CHECKS[name], model, atoms, ref, protocol, tolerances.of(name)))
    if "nve" in checks:
        results.append(guarded("nve", check_nve, model, atoms, protocol, tolerances.nve_drift))
    return ConformanceReport(model_name(model), label, results)


# ---------------------------------------------------------------------------------------------
# Structures and the one-line assertion


def standard_cells() -> list[Atoms]:
    """Small periodic cells, rattled (fixed seeds) so forces are non-zero: metallic, ionic,
    covalent. ``assert_conformant`` uses those whose elements a model supports."""
    cells = [
        bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1),         # 8 atoms: every metal potential
        bulk("NaCl", "rocksalt", a=5.64, cubic=True),               # 8 atoms: ionic
        bulk("Si", "diamond", a=5.43, cubic=True),                  # 8 atoms: covalent
        bulk("Al", "fcc", a=4.05, cubic=True) * (2, 1, 1),
    ]
    for i, atoms in enumerate(cells):
        atoms.rattle(stdev=0.05, seed=7 + i)
        atoms.info["id"] = f"check-{atoms.get_chemical_formula()}"
    return cells


def assert_conformant(model: Model, structures: Atoms | Sequence[Atoms] | None = None, *,
                      tolerances: Tolerances = Tolerances(), protocol: Protocol = DEFAULT_PROTOCOL,
                      checks: Iterable[str] = (*BASIC_CHECKS, *SYMMETRY_CHECKS)) -> list[ConformanceReport]:
    """Run ``checks`` on each structure (default: the :func:`standard_cells` whose elements a
    Potential's card supports, or all of them for a plain calculator) and raise ``AssertionError``
    listing every failed check with its size. Returns the reports when everything passes.

    The NVE check is left out by default (it takes hundreds of model calls); add ``"nve"`` to
    ``checks`` to include it.
    """
    if structures is None:
        supported = set(model.card.elements) if isinstance(model, Potential) else set()
        structures = [c for c in standard_cells() if not supported or set(c.get_chemical_symbols()) <= supported]
        if not structures:
            raise ValueError(f"none of the standard cells fits {model_name(model)}'s elements; pass structures=")
    elif isinstance(structures, Atoms):
        structures = [structures]
    reports = [run_checks(model, s, protocol=protocol, tolerances=tolerances, checks=checks) for s in structures]
    failed = [(r, c) for r in reports for c in r.failures]
    if failed:
        lines = [f"{r.model} on {r.structure}: {c.summary()}" for r, c in failed]
        raise AssertionError(f"{len(failed)} conformance check(s) failed:\n  " + "\n  ".join(lines))
    return reports
