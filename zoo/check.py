"""The smoke check behind ``mlipzoo models check``: load a model, predict on a small built-in
periodic cell, and verify what any physical potential must satisfy there."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.data import atomic_numbers, covalent_radii

from mlip_zoo.zoo.potential import Potential

# Net force on a periodic cell is zero by translation invariance; float32 models carry ~1e-5
# of round-off per atom, so this bound separates round-off from a real defect.
NET_FORCE_TOL = 1e-3  # eV/Å


def check_cells() -> list[Atoms]:
    """Small periodic cells, tried in order until one uses only elements the model supports.

    Rattled (fixed seed) so forces are non-zero and the net-force test means something.
    """
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
    before = cell.copy()
    t0 = time.perf_counter()
    (pred,) = potential.predict([cell])
    seconds = time.perf_counter() - t0
    net = float(np.linalg.norm(pred.forces.sum(axis=0)))
    problems = []
    if net > NET_FORCE_TOL:
        problems.append(f"net force {net:.2e} eV/Å on a periodic cell exceeds {NET_FORCE_TOL:g}")
    if potential.card.stress and pred.stress is None:
        problems.append("card targets stress but none was returned")
    if not (np.array_equal(cell.positions, before.positions) and np.array_equal(cell.cell, before.cell)
            and cell.calc is None):
        problems.append("predict() modified its input structure")
    if float(np.abs(pred.forces).max()) == 0.0:
        problems.append("all forces are exactly zero on a rattled cell")
    return CheckReport(
        model=potential.card.key, structure=cell.info["id"], n_atoms=len(cell), energy=pred.energy,
        energy_per_atom=pred.energy / len(cell), max_force=float(np.linalg.norm(pred.forces, axis=1).max()),
        net_force=net, stress=None if pred.stress is None else pred.stress.tolist(),
        seconds_load=seconds_load, seconds_predict=seconds, device=potential.device, dtype=potential.dtype,
        problems=problems)
