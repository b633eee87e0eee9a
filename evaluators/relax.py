"""The one relaxer every relaxing task shares.

It runs ASE's own optimizers, one structure at a time, so its answer *is* ASE's answer (the
reference protocols of fairchem and matbench-discovery are ASE loops). ``FixAtoms`` constraints on
the input are honoured; a cell relaxation wraps the atoms in ``FrechetCellFilter``. Protocol
constants come from the task config, never from defaults here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from pydantic import BaseModel, ConfigDict

from mlip_zoo.zoo.potential import Potential, PotentialCalculator, Prediction


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
          on_step: Callable[[Atoms, int], None] | None = None, *, calculator: Calculator | None = None
          ) -> Relaxation:
    """Relax a copy of ``atoms`` with ``potential`` (through ``calculator`` when given, an ASE
    view of it) under ``protocol``."""
    work = atoms.copy()  # keeps FixAtoms constraints, drops any calculator
    work.calc = calculator if calculator is not None else potential.as_calculator()
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


class _Lockstep:
    """The model calls of a group of relaxations, one step at a time: each relaxation's thread
    hands in its structure and waits; when every still-running one has, the last to arrive runs
    them as one ``Potential.predict`` batch (in group order, so the batch is the same on every
    run) and wakes the others. A batch that raises is redone one structure at a time, so an
    error stays with the structure that caused it."""

    def __init__(self, potential: Potential, size: int):
        self.potential, self.running = potential, size
        self.pending: dict[int, tuple[Atoms, tuple[str, ...]]] = {}
        self.results: dict[int, Prediction | Exception] = {}
        self.batches = 0
        self.lock = threading.Condition()

    def predict(self, index: int, atoms: Atoms, properties: tuple[str, ...]) -> Prediction:
        with self.lock:
            self.pending[index] = (atoms, properties)
            batch = self.batches
            if len(self.pending) == self.running:
                self._flush()
            else:
                self.lock.wait_for(lambda: self.batches != batch)
            result = self.results.pop(index)
        if isinstance(result, Exception):
            raise result
        return result

    def finished(self) -> None:
        with self.lock:
            self.running -= 1
            if self.pending and len(self.pending) == self.running:
                self._flush()

    def _flush(self) -> None:  # called with the lock held, by the last thread to arrive
        order = sorted(self.pending)
        structures = [self.pending[i][0] for i in order]
        properties = tuple(dict.fromkeys(p for i in order for p in self.pending[i][1]))
        try:
            self.results.update(zip(order, self.potential.predict(structures, properties), strict=True))
        except Exception:  # noqa: BLE001 -- find whose structure it was
            for i, atoms in zip(order, structures, strict=True):
                try:
                    (self.results[i],) = self.potential.predict([atoms], properties)
                except Exception as exc:  # noqa: BLE001 -- raised in that structure's own thread
                    self.results[i] = exc
        self.pending.clear()
        self.batches += 1
        self.lock.notify_all()


class _LockstepCalculator(PotentialCalculator):
    """One relaxation's ASE calculator: its model calls go through the group's ``_Lockstep``."""

    def __init__(self, lockstep: _Lockstep, index: int):
        super().__init__(lockstep.potential)
        self.lockstep, self.index = lockstep, index

    def _predict(self, atoms: Atoms, properties: tuple[str, ...]) -> Prediction:
        return self.lockstep.predict(self.index, atoms, properties)  # predict() copies what it keeps


def relax_many(structures: Sequence[Atoms], potential: Potential, protocol: RelaxProtocol,
               batch_size: int | None = None) -> list[tuple[Relaxation | Exception, float]]:
    """``relax`` each structure; returns, in order, its Relaxation (or the exception that stopped
    it, an element the model was not trained on included) and its wall seconds.

    Groups of ``batch_size`` (default: the potential's ``relax_batch_size``) relax side by side,
    each step's model calls batched (``_Lockstep``). ASE's optimizer and filter still run per
    structure, so the answers are ``relax``'s up to the round-off of the model's batched path.
    Groups are fixed by input order, which keeps every batch, and so every number, the same from
    run to run."""
    out: list[tuple[Relaxation | Exception, float]] = [(RuntimeError("not relaxed"), 0.0)] * len(structures)
    todo = []
    for i, atoms in enumerate(structures):
        try:
            potential.check_elements(atoms, i)
            todo.append(i)
        except Exception as exc:  # noqa: BLE001 -- the caller records it with the structure
            out[i] = (exc, 0.0)

    def run(i: int, calculator: Calculator | None = None, lockstep: _Lockstep | None = None) -> None:
        t0 = time.perf_counter()
        try:
            out[i] = (relax(structures[i], potential, protocol, calculator=calculator), time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001
            out[i] = (exc, time.perf_counter() - t0)
        finally:
            if lockstep is not None:
                lockstep.finished()

    size = max(1, batch_size or potential.relax_batch_size)
    for start in range(0, len(todo), size):
        group = todo[start:start + size]
        if len(group) == 1:
            run(group[0])
            continue
        lockstep = _Lockstep(potential, len(group))
        threads = [threading.Thread(target=run, args=(i, _LockstepCalculator(lockstep, i), lockstep),
                                    name=f"relax-{i}") for i in group]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return out
