"""The smoke check behind ``mlipzoo models check``: load a model, predict on a small built-in
periodic cell, and verify what any physical potential must satisfy there. The checks themselves
(shapes, finite outputs, untouched input, vanishing net force) are the conformance kit's
(``mlip_zoo.zoo.conformance.basic_checks``); this module picks the cell and words the report."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
from ase.build import bulk
from ase.data import atomic_numbers, covalent_radii

from mlip_zoo.zoo.conformance import Tolerances, basic_checks
from mlip_zoo.zoo.conformance import standard_cells as check_cells
from mlip_zoo.zoo.potential import Potential


@dataclass
class CheckReport:
    model: str
    structure: str
    n_atoms: int
    energy: float
    energy_per_atom: float
    max_force: float
    net_force: float
    stress: list[float] | None
    seconds_load: float
    seconds_predict: float
    device: str
    dtype: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def smoke_check(potential: Potential, seconds_load: float = 0.0) -> CheckReport:
    supported = set(potential.card.elements)
    cell = next((c for c in check_cells() if not supported or set(c.get_chemical_symbols()) <= supported), None)
    if cell is None:  # a model of other elements: an fcc cell of its first element, at touching radii
        symbol = potential.card.elements[0]
        a = 2 * np.sqrt(2) * covalent_radii[atomic_numbers[symbol]] * 1.2
        cell = bulk(symbol, "fcc", a=a, cubic=True) * (2, 1, 1)
        cell.rattle(stdev=0.05, seed=7)
        cell.info["id"] = f"check-{cell.get_chemical_formula()}"
    t0 = time.perf_counter()
    out, results = basic_checks(potential, cell)
    seconds = time.perf_counter() - t0
    checks = {c.name: c for c in results}
    net = checks["net_force"].errors["net_force"][0]
    problems = [*checks["shapes"].detail["problems"],
                *(f"{name} is not finite" for name in checks["finite"].detail["non_finite"])]
    if checks["no_mutation"].detail["changed"]:
        problems.append("predict() modified its input structure (" + ", ".join(checks["no_mutation"].detail["changed"]) + ")")
    if not checks["net_force"].passed:
        problems.append(f"net force {net:.2e} eV/Å on a periodic cell exceeds {Tolerances.net_force:g}")
    if float(np.abs(out.forces).max()) == 0.0:
        problems.append("all forces are exactly zero on a rattled cell")
    return CheckReport(
        model=potential.card.key, structure=cell.info["id"], n_atoms=len(cell), energy=out.energy,
        energy_per_atom=out.energy / len(cell), max_force=float(np.linalg.norm(out.forces, axis=1).max()),
        net_force=net, stress=None if out.stress is None else out.stress.tolist(),
        seconds_load=seconds_load, seconds_predict=seconds, device=potential.device, dtype=potential.dtype,
        problems=problems)
