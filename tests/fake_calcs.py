"""ASE calculators for tests: EMT made slow, or made to fail on chosen structures. Loaded through
a `family: ase` card, in this process or in Dask workers (tests/ is on their path)."""

from __future__ import annotations

import time

from ase.calculators.emt import EMT


class SlowEMT(EMT):
    """EMT that takes ``delay`` seconds per call, so a run can be killed mid-way."""

    def __init__(self, delay: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.delay = delay

    def calculate(self, *args, **kwargs):
        time.sleep(self.delay)
        super().calculate(*args, **kwargs)


class ExplodingEMT(EMT):
    """EMT that raises for structures whose info has ``explode`` set."""

    def calculate(self, atoms=None, *args, **kwargs):
        if atoms is not None and atoms.info.get("explode"):
            raise RuntimeError("model blew up on this structure")
        super().calculate(atoms, *args, **kwargs)


class FragileEMT(EMT):
    """EMT that raises on structures flagged ``explode`` and returns NaN forces on ``nan_forces``."""

    def calculate(self, atoms=None, *args, **kwargs):
        if atoms is not None and atoms.info.get("explode"):
            raise RuntimeError("model blew up mid-batch on this structure")
        super().calculate(atoms, *args, **kwargs)
        if atoms is not None and atoms.info.get("nan_forces"):
            self.results["forces"] = self.results["forces"] * float("nan")


class CollapsingEMT(EMT):
    """EMT plus an attraction that grows without bound as atoms approach: relaxations diverge."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        import numpy as np

        super().calculate(atoms, properties, system_changes or [])
        self.results["energy"] -= 50.0 * float(np.sum(self.atoms.positions[:, 2]))  # pulls atoms up forever
        forces = self.results["forces"].copy()
        forces[:, 2] += 50.0
        self.results["forces"] = forces
