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


class NoisyEMT(EMT):
    """EMT plus noise that depends only on the structure and ``seed`` (the same structure gets the
    same noise in any order, shard or worker): energy + ``energy_bias`` + N(0, ``energy_noise``),
    each force component + N(0, ``force_noise``). A model with known error statistics."""

    def __init__(self, energy_bias: float = 0.0, energy_noise: float = 0.0, force_noise: float = 0.0,
                 seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.energy_bias, self.energy_noise, self.force_noise, self.seed = energy_bias, energy_noise, force_noise, seed

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        import hashlib

        import numpy as np

        super().calculate(atoms, properties, system_changes or [])
        key = np.round(self.atoms.positions, 6).tobytes() + self.atoms.numbers.tobytes() + str(self.seed).encode()
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
        shift = self.energy_bias + self.energy_noise * rng.standard_normal()
        self.results["energy"] += shift
        if "free_energy" in self.results:
            self.results["free_energy"] += shift
        self.results["forces"] = self.results["forces"] + self.force_noise * rng.standard_normal(
            self.results["forces"].shape)


class WitnessEMT(EMT):
    """EMT that notes, once per process, which Python runs it and in which SLURM job: a line
    ``<sys.executable> <SLURM_JOB_ID or ->`` appended to the file named by $MLIPZOO_TEST_WITNESS."""

    def __init__(self, **kwargs):
        import os
        import sys

        super().__init__(**kwargs)
        if os.environ.get("MLIPZOO_TEST_WITNESS"):
            with open(os.environ["MLIPZOO_TEST_WITNESS"], "a") as f:
                f.write(f"{sys.executable} {os.environ.get('SLURM_JOB_ID', '-')}\n")


class LethalEMT(EMT):
    """EMT that kills the whole process (as the kernel's OOM killer would) on structures whose
    info has ``explode`` set."""

    def calculate(self, atoms=None, *args, **kwargs):
        import os

        if atoms is not None and atoms.info.get("explode"):
            os._exit(137)
        super().calculate(atoms, *args, **kwargs)


# Per-element reference energies (eV/atom) of the adsorption-energy test sets: a structure's
# reference energy is sum_e n_e REFERENCES[e], its adsorption energy the EMT energy minus that.
REFERENCES = {"H": -3.4, "C": -7.3, "N": -8.3, "O": -7.2, "Al": -3.1, "Ni": -5.5, "Cu": -3.6, "Pt": -6.0}


def reference_energy(atoms) -> float:
    return float(sum(REFERENCES[s] for s in atoms.get_chemical_symbols()))


class AdsorptionEMT(EMT):
    """A model of adsorption energies: EMT minus ``reference_energy`` (a constant of the
    composition, so the forces are EMT's)."""

    def calculate(self, atoms=None, *args, **kwargs):
        super().calculate(atoms, *args, **kwargs)
        self.results["energy"] -= reference_energy(self.atoms)
        self.results["free_energy"] = self.results["energy"]
