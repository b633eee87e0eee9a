"""WBM-like starting cells for the relaxation benchmark: small perturbed alloy and elemental bulk
cells (4-8 atoms), of elements both SevenNet-0 and CHGNet were trained on, from a fixed seed.

Like WBM's candidates they start away from their minimum: substituted species on a prototype
lattice, the lattice constant from Vegard's law, then a random strain and a rattle.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.data import atomic_numbers, reference_states

ELEMENTS = ("Al", "Cu", "Ni", "Pd", "Ag", "Pt", "Au", "Fe", "Mo", "W", "Nb", "Ta", "V", "Cr")
# (prototype, repeat) -> atoms per cell: fcc cubic 4, bcc cubic x(3,1,1) 6, fcc cubic x(2,1,1) 8
PROTOTYPES = (("fcc", (1, 1, 1)), ("bcc", (3, 1, 1)), ("fcc", (2, 1, 1)), ("bcc", (2, 1, 1)))


def _volume_per_atom(symbol: str) -> float:
    state = reference_states[atomic_numbers[symbol]]
    a = state["a"]
    return {"fcc": a**3 / 4, "bcc": a**3 / 2}.get(state["symmetry"], a**3 / 4)


def make_cells(n: int = 64, seed: int = 0) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    cells = []
    for i in range(n):
        lattice, repeat = PROTOTYPES[rng.integers(len(PROTOTYPES))]
        k = int(rng.integers(1, 4))  # unary, binary or ternary
        species = list(rng.choice(ELEMENTS, size=k, replace=False))
        per_cell = {"fcc": 4, "bcc": 2}[lattice] * int(np.prod(repeat))
        symbols = [species[j % k] for j in range(per_cell)]
        rng.shuffle(symbols)
        volume = float(np.mean([_volume_per_atom(s) for s in symbols]))  # Vegard
        a = (volume * {"fcc": 4, "bcc": 2}[lattice]) ** (1 / 3)
        atoms = bulk("X", lattice, a=a, cubic=True) * repeat
        atoms.set_chemical_symbols(symbols)
        strain = np.eye(3) + rng.normal(0, 0.03, (3, 3))
        atoms.set_cell(atoms.cell[:] @ (strain + strain.T) / 2, scale_atoms=True)
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        atoms.info["id"] = f"wbm-like-{i:03d}-{atoms.get_chemical_formula()}"
        cells.append(atoms)
    return cells
