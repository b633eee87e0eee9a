"""The conformance kit's vocabulary (see ``mlip_zoo.zoo.conformance``, which documents the checks
and is the module to import): the protocol and tolerances, a check's result, calling a model, the
relative errors every check measures, and the basic checks (shapes, finite outputs, untouched input,
vanishing net force) whose prediction the other checks compare against."""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError
from ase.stress import voigt_6_to_full_3x3_stress
from pydantic import BaseModel, ConfigDict, Field

from mlip_zoo.zoo.potential import Potential
from mlip_zoo.zoo.structures import structure_label

ENERGY_FLOOR = 1e-3  # eV/atom
FORCE_FLOOR = 1e-3  # eV/Å, per atom (the floor of ||F|| is sqrt(N) times this)
STRESS_FLOOR = 1e-5  # eV/Å³ (1.6 MPa)

SYMMETRY_CHECKS = ("rotation", "translation", "permutation", "supercell", "finite_difference")
BASIC_CHECKS = ("shapes", "finite", "no_mutation", "net_force")
ALL_CHECKS = (*BASIC_CHECKS, *SYMMETRY_CHECKS, "nve")

Model = Potential | Calculator


# ---------------------------------------------------------------------------------------------
# Protocol and tolerances


class NVEProtocol(BaseModel):
    """A short NVE run: pre-relax, Maxwell-Boltzmann velocities, velocity Verlet."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    timestep_fs: float = 1.0
    steps: int = 100  # 0.1 ps: a smoke test of conservation, sized for CPU budgets
    temperature_K: float = 300.0
    prerelax_fmax: float = 0.05  # eV/Å, LBFGS on positions
    prerelax_steps: int = 100
    drop_fraction: float = 0.1  # equilibration share dropped before the drift is measured
    window: int = 20  # moving-average points


class Protocol(BaseModel):
    """Every constant the checks use. The ``symmetry`` task reads it from its versioned config."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: int = 0
    n_rotations: int = 4
    translation: float = 3.0  # Å, length of the random translation
    supercell: tuple[int, int, int] = (2, 2, 2)
    fd_step: float = 3e-3  # Å: see the module docstring for why not smaller
    fd_order: Literal[2, 4] = 4
    fd_components: int = 6  # force components checked per structure (seeded choice)
    nve: NVEProtocol = Field(default_factory=NVEProtocol)


DEFAULT_PROTOCOL = Protocol()  # frozen, so one shared default is safe


@dataclass(frozen=True)
class Tolerances:
    """What "passes" means, per check. Relative unless the unit says otherwise.

    The defaults are for a float64 model that is exactly symmetric (EMT passes them all):
    symmetry holds to round-off (~1e-13), and the 4th-order finite difference at h = 3e-3 Å
    reaches ~1e-9. ``net_force`` is absolute (eV/Å) and ``nve_drift`` is in meV/atom/ps.
    """

    rotation: float = 1e-8
    translation: float = 1e-8
    permutation: float = 1e-8
    supercell: float = 1e-8
    finite_difference: float = 1e-8
    net_force: float = 1e-3  # eV/Å: float32 models carry ~1e-5 round-off per atom
    nve_drift: float = 1.0  # meV/atom/ps

    @classmethod
    def float32(cls) -> Tolerances:
        """For models that compute in float32 (most MLIPs): symmetry to 1e-3 relative, finite
        differences to 5e-2. Measured on symmetry-mini (task v1.0): SevenNet-0 at ~2e-6 and
        CHGNet 0.3.0 at ~1e-4 on every symmetry check alike, translation included, which marks
        float32 round-off in the forces rather than a broken symmetry (a symmetry defect shows in
        one check, not all); both at 6-7e-3 on finite differences, the float32 energy's
        round-off floor at h = 3e-3 Å (see the module docstring)."""
        return cls(rotation=1e-3, translation=1e-3, permutation=1e-3, supercell=1e-3, finite_difference=5e-2)

    def of(self, check: str) -> float:
        return getattr(self, {"nve": "nve_drift"}.get(check, check))


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class CheckResult:
    """One check on one structure.

    ``errors`` maps each measured quantity to its per-trial values (relative, or in ``unit``);
    ``passed`` is None for a skipped check. ``detail`` carries what explains a failure (absolute
    errors, the worst trial) or what a task stores (an NVE trace).
    """

    name: str
    structure: str
    errors: dict[str, list[float]] = field(default_factory=dict)
    tolerance: float = 0.0
    unit: str = "relative"
    skipped: str | None = None
    detail: dict = field(default_factory=dict)

    @property
    def worst(self) -> float:
        values = [v for vs in self.errors.values() for v in vs]
        if not values:
            return 0.0
        return math.inf if any(not math.isfinite(v) for v in values) else max(values)

    @property
    def passed(self) -> bool | None:
        return None if self.skipped else self.worst <= self.tolerance

    def summary(self) -> str:
        if self.skipped:
            return f"{self.name}: skipped ({self.skipped})"
        parts = ", ".join(f"{q} {max(v):.2e}" for q, v in self.errors.items() if v)
        verdict = "ok" if self.passed else "FAIL"
        return f"{self.name}: {verdict} (worst {self.worst:.2e} {self.unit} vs tolerance {self.tolerance:g}; {parts})"

    def as_dict(self) -> dict:
        return {**asdict(self), "worst": self.worst, "passed": self.passed}


@dataclass
class ConformanceReport:
    model: str
    structure: str
    checks: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(c.passed is not False for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.passed is False]

    def __getitem__(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check {name!r} in this report (ran: {', '.join(c.name for c in self.checks)})")

    def __str__(self) -> str:
        return "\n".join([f"{self.model} on {self.structure}:", *("  " + c.summary() for c in self.checks)])

    def as_dict(self) -> dict:
        return {"model": self.model, "structure": self.structure, "ok": self.ok,
                "checks": [c.as_dict() for c in self.checks]}


# ---------------------------------------------------------------------------------------------
# Calling a model


@dataclass(frozen=True)
class Output:
    energy: float
    forces: np.ndarray  # (N, 3)
    stress: np.ndarray | None  # (6,) Voigt, or None when not computed


def model_name(model: Model) -> str:
    return model.card.key if isinstance(model, Potential) else type(model).__name__


def _wants_stress(model: Model, atoms: Atoms) -> bool:
    if not atoms.pbc.all():  # stress needs a volume: only for cells periodic on every axis
        return False
    return "stress" in (model.implemented_properties if isinstance(model, Potential)
                        else getattr(model, "implemented_properties", ()))


def evaluate(model: Model, atoms: Atoms) -> Output:
    """Energy, forces and (for a 3D-periodic cell, if the model has it) stress of ``atoms``, as
    float64. Raises whatever the model raises. ``atoms`` itself is passed to the model (an ASE
    calculator is attached to it), so callers pass copies."""
    stress = _wants_stress(model, atoms)
    if isinstance(model, Potential):
        (p,) = model.predict([atoms], properties=("energy", "forces", "stress") if stress else ("energy", "forces"))
        return Output(p.energy, p.forces, p.stress)
    if not isinstance(model, Calculator):
        raise TypeError(f"the conformance kit checks an mlip-zoo Potential or an ASE Calculator, got "
                        f"{type(model).__name__}")
    model.reset()  # no cached results or neighbour lists from the previous structure
    atoms.calc = model
    energy = float(atoms.get_potential_energy())
    forces = np.array(atoms.get_forces(apply_constraint=False), dtype=np.float64)
    s = None
    if stress:
        with contextlib.suppress(PropertyNotImplementedError):
            s = np.array(atoms.get_stress(voigt=True), dtype=np.float64)
    return Output(energy, forces, s)


def _plain(atoms: Atoms) -> Atoms:
    """A copy without constraints or calculator: the checks are about the model, and a FixAtoms
    would zero forces that the finite differences still see."""
    a = atoms.copy()
    a.set_constraint()
    a.calc = None
    return a


def _rel(diff: np.ndarray, ref: np.ndarray, floor: float) -> float:
    return float(np.linalg.norm(diff) / max(float(np.linalg.norm(ref)), floor))


def _energy_rel(e_new: float, e_ref: float, n_atoms: int) -> float:
    return abs(e_new - e_ref) / max(abs(e_ref), n_atoms * ENERGY_FLOOR)


def _stress_full(voigt: np.ndarray) -> np.ndarray:
    return voigt_6_to_full_3x3_stress(np.asarray(voigt, dtype=np.float64))


def _compare_invariant(result: CheckResult, ref: Output, new: Output, n_atoms: int,
                       expected_forces: np.ndarray) -> None:
    """Errors for a transformation that leaves E and sigma unchanged and maps F to expected_forces."""
    result.errors.setdefault("energy", []).append(_energy_rel(new.energy, ref.energy, n_atoms))
    result.errors.setdefault("forces", []).append(
        _rel(new.forces - expected_forces, expected_forces, math.sqrt(n_atoms) * FORCE_FLOOR))
    if ref.stress is not None and new.stress is not None:
        result.errors.setdefault("stress", []).append(
            _rel(_stress_full(new.stress) - _stress_full(ref.stress), _stress_full(ref.stress), STRESS_FLOOR))


# ---------------------------------------------------------------------------------------------
# Group actions and the irreducible parts of the stress (e3nn)


@contextlib.contextmanager
def _float64_torch():
    """e3nn builds change-of-basis and Wigner matrices in torch's default dtype; in float32 they
    carry ~1e-7 of error, which would hide a 1e-8 symmetry breaking. Build them in float64."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield torch
    finally:
        torch.set_default_dtype(previous)


def random_rotations(n: int, seed: int) -> np.ndarray:
    """``n`` proper rotations (n, 3, 3), uniform (Haar) on SO(3), from ``e3nn.o3.rand_matrix``,
    reproducible for a seed and leaving torch's global random state untouched."""
    from e3nn import o3

    with _float64_torch() as torch, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return o3.rand_matrix(n, dtype=torch.float64).numpy().copy()


class StressIrreps:
    """The symmetric stress as irreducible parts ``0e + 2e`` (``e3nn.io.CartesianTensor("ij=ji")``).

    ``split(voigt)`` gives the 6 irrep components (an orthonormal change of basis, so their norm is
    the Frobenius norm of the 3x3 tensor); ``wigner(R)`` the block-diagonal matrix they rotate by.
    """

    def __init__(self):
        from e3nn import o3
        from e3nn.io import CartesianTensor

        with _float64_torch():
            self.cartesian = CartesianTensor("ij=ji")
            # Built here rather than through CartesianTensor's cache, which may hold a float32 copy.
            self._rtp = o3.ReducedTensorProducts("ij=ji", i="1o", j="1o")
        self.slices = {str(ir): s for (_, ir), s in zip(self.cartesian, self.cartesian.slices())}

    def split(self, voigt: np.ndarray) -> np.ndarray:
        import torch

        full = torch.as_tensor(voigt_6_to_full_3x3_stress(np.asarray(voigt, dtype=np.float64)))
        return self.cartesian.from_cartesian(full, self._rtp).numpy()

    def wigner(self, rotation: np.ndarray) -> np.ndarray:
        import torch

        with _float64_torch():
            return self.cartesian.D_from_matrix(torch.as_tensor(rotation, dtype=torch.float64)).numpy()


@functools.cache
def _stress_irreps() -> StressIrreps:
    return StressIrreps()  # built once per process: the change of basis is a small eigenproblem


# ---------------------------------------------------------------------------------------------
# The basic checks


def basic_checks(model: Model, atoms: Atoms, tolerances: Tolerances = Tolerances(),
                 ) -> tuple[Output, list[CheckResult]]:
    """One prediction on ``atoms`` (a copy stands in for the caller's object) and what it must
    satisfy: shapes, finiteness, an unmodified input, and a vanishing net force. Returns the
    prediction, which the other checks use as their reference."""
    label = structure_label(atoms, 0)
    probe, before = _plain(atoms), _plain(atoms)
    out = evaluate(model, probe)
    n = len(atoms)
    shapes = CheckResult("shapes", label, unit="problems", tolerance=0)
    problems = []
    if np.shape(out.forces) != (n, 3):
        problems.append(f"forces have shape {np.shape(out.forces)}, expected ({n}, 3)")
    if _wants_stress(model, atoms) and out.stress is None:
        problems.append("the model declares stress but returned none")
    if out.stress is not None and np.shape(out.stress) != (6,):
        problems.append(f"stress has shape {np.shape(out.stress)}, expected (6,) Voigt")
    shapes.errors["problems"] = [float(len(problems))]
    shapes.detail["problems"] = problems

    finite = CheckResult("finite", label, unit="non-finite outputs", tolerance=0)
    bad = [name for name, v in (("energy", out.energy), ("forces", out.forces), ("stress", out.stress))
           if v is not None and not np.all(np.isfinite(v))]
    finite.errors["non_finite"] = [float(len(bad))]
    finite.detail["non_finite"] = bad

    mutation = CheckResult("no_mutation", label, unit="changed fields", tolerance=0)
    changed = [name for name, same in (
        ("positions", np.array_equal(probe.positions, before.positions)),
        ("cell", np.array_equal(probe.cell.array, before.cell.array)),
        ("numbers", np.array_equal(probe.numbers, before.numbers)),
        ("pbc", np.array_equal(probe.pbc, before.pbc)),
        ("arrays", sorted(probe.arrays) == sorted(before.arrays)),
        ("info", probe.info == before.info),
        # A Potential is not an ASE calculator: it must not attach anything to its input.
        ("calc", probe.calc is None or not isinstance(model, Potential)),
    ) if not same]
    mutation.errors["changed"] = [float(len(changed))]
    mutation.detail["changed"] = changed

    net = CheckResult("net_force", label, unit="eV/Å", tolerance=tolerances.net_force)
    net.errors["net_force"] = [float(np.linalg.norm(np.sum(out.forces, axis=0)))] if not bad else [math.inf]
    return out, [shapes, finite, mutation, net]
