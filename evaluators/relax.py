"""The one relaxer every relaxing task shares.

It runs ASE's own optimizers, one structure at a time, so its answer *is* ASE's answer (the
reference protocols of fairchem and matbench-discovery are ASE loops). ``FixAtoms`` constraints on
the input are honoured; a cell relaxation wraps the atoms in ``FrechetCellFilter``. Protocol
constants come from the task config, never from defaults here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from ase import Atoms
from pydantic import BaseModel, ConfigDict

from mlip_zoo.zoo.potential import Potential


class RelaxProtocol(BaseModel):
    """Optimizer, its constants, and when to stop. Part of a task's versioned config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    optimizer: Literal["LBFGS", "FIRE", "BFGS"]
    fmax: float  # eV/Å, on the (filtered) forces
    steps: int
    cell_filter: Literal["none", "frechet"] = "none"
    optimizer_kwargs: dict[str, float | int] = {}
    # A relaxation whose energy falls below this many eV/atom under its start, or whose atoms move
    # farther than max_displacement Å, has exploded: stop it and record the failure.
    max_energy_drop_per_atom: float = 10.0
    max_displacement: float = 20.0


@dataclass
class Relaxation:
    atoms: Atoms  # relaxed structure (a copy; the input is untouched)
    energy: float
    forces: np.ndarray
    steps: int
    converged: bool
    trajectory_energies: list[float] = field(default_factory=list)


class RelaxationExploded(RuntimeError):
    pass


def _optimizer_class(name: str):
    from ase import optimize

    return getattr(optimize, name)


def relax(atoms: Atoms, potential: Potential, protocol: RelaxProtocol,
          on_step: Callable[[Atoms, int], None] | None = None) -> Relaxation:
    """Relax a copy of ``atoms`` with ``potential`` under ``protocol``."""
    work = atoms.copy()  # keeps FixAtoms constraints, drops any calculator
    work.calc = potential.as_calculator()
    target = work
    if protocol.cell_filter == "frechet":
        from ase.filters import FrechetCellFilter

        target = FrechetCellFilter(work)
    opt = _optimizer_class(protocol.optimizer)(target, logfile=None, **protocol.optimizer_kwargs)
    start_energy = work.get_potential_energy()
    start_positions = work.get_positions()
    energies = [start_energy]

    def guard() -> None:
        e = work.get_potential_energy()
        energies.append(e)
        if start_energy - e > protocol.max_energy_drop_per_atom * len(work):
            raise RelaxationExploded(f"energy fell {start_energy - e:.1f} eV in {opt.nsteps} steps")
        moved = np.linalg.norm(work.get_positions() - start_positions, axis=1).max()
        if moved > protocol.max_displacement:
            raise RelaxationExploded(f"an atom moved {moved:.1f} Å in {opt.nsteps} steps")
        if on_step is not None:
            on_step(work, opt.nsteps)

    opt.attach(guard, interval=1)
    converged = bool(opt.run(fmax=protocol.fmax, steps=protocol.steps))
    return Relaxation(atoms=work, energy=float(work.get_potential_energy()), forces=work.get_forces().copy(),
                      steps=int(opt.nsteps), converged=converged, trajectory_energies=energies)
