"""Generate shift-mini (EMT labels): a training split and test structures shifted on one axis each.

This is **not** a published benchmark. It is a small set with *controlled* shifts, so the
``ood-shift`` and ``ttr`` tasks run end to end anywhere in seconds; every label comes from ASE's
EMT (energies and forces of the fcc metals it is parametrised for; its rough H/C/N/O parameters
are not used). Numbers on it say whether a pipeline works and which way a shift moves errors,
not how good a model is.

Every structure has 32 atoms, so spectra are compared at equal length and the connectivity axis
sees neighbourhoods, not sizes.

- ``train.json``: 2x2x2 conventional fcc supercells of Cu, Ag, Au, Ni and their random binary
  alloys (Vegard lattice constant from EMT's own ones, ±2 % isotropic strain), each the last
  frame of a short Langevin run at 250-450 K.
- ``test.json``, key ``split`` names the one axis a structure was shifted on:
  ``none`` (fresh draws of the training recipe: the control), ``element`` (a quarter to all of
  the atoms are Pd, Pt or Al, absent from training), ``force_norm`` (the training recipe at
  1500-2500 K: high-temperature frames with large forces), ``connectivity`` (EMT-relaxed
  fcc(100)/fcc(111) slabs and 32-atom clusters of the training metals, thermalised at the
  training temperatures: surfaces and clusters vs bulk).
- ``manifest.json``: seed, recipe constants, counts and each file's sha256.

Files are ASE JSON databases (every float at full precision), byte-reproducible for a seed and
library versions. Run ``python -m mlip_zoo.evaluators.shift.make_mini [--out DIR] [--seed N]``.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import time
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import bulk, fcc100, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.optimize import FIRE

from mlip_zoo.evaluators.oc20.make_mini import ase_json_db

LABEL = "shift-mini (EMT labels)"
TRAIN_ELEMENTS = ("Cu", "Ag", "Au", "Ni")
HELD_OUT = ("Pd", "Pt", "Al")  # absent from train.json
N_ATOMS = 32
TRAIN_T, HOT_T = (250.0, 450.0), (1500.0, 2500.0)  # K
STRAIN = 0.02
MD_STEPS, TIMESTEP, FRICTION = 100, 2.0 * units.fs, 0.02 / units.fs
VACUUM = 10.0  # Å each side: more than the largest radius-graph radius (9 Å), so images never meet
N_TRAIN = 120
N_TEST = {"none": 16, "element": 24, "force_norm": 24, "connectivity": 24}
ELEMENT_SHARES = (0.25, 0.5, 0.75, 1.0)


def emt_lattice_constant(symbol: str) -> float:
    """EMT's own fcc lattice constant: the vertex of a parabola through E(a) around ASE's value."""
    a0 = bulk(symbol, "fcc").cell.cellpar()[0] * np.sqrt(2)
    grid = a0 * np.linspace(0.97, 1.03, 7)
    energies = []
    for a in grid:
        atoms = bulk(symbol, "fcc", a=a, cubic=True)
        atoms.calc = EMT()
        energies.append(atoms.get_potential_energy())
    c2, c1, _ = np.polyfit(grid, energies, 2)
    return float(-c1 / (2 * c2))


def random_alloy(elements: tuple[str, ...], shares: dict[str, int], rng) -> list[str]:
    symbols = [s for s in elements for _ in range(shares[s])]
    return [str(s) for s in rng.permutation(symbols)]


def bulk_cell(symbols: list[str], lattice: dict[str, float], rng) -> Atoms:
    """A 32-atom fcc supercell with the given site occupation, Vegard lattice constant, strained."""
    a = float(np.mean([lattice[s] for s in symbols])) * (1 + rng.uniform(-STRAIN, STRAIN))
    atoms = bulk("Cu", "fcc", a=a, cubic=True) * (2, 2, 2)
    atoms.set_chemical_symbols(symbols)
    return atoms


def training_symbols(rng) -> list[str]:
    """One training metal, or a random binary alloy of two, over 32 sites."""
    if rng.random() < 0.4:
        return [str(rng.choice(TRAIN_ELEMENTS))] * N_ATOMS
    pair = tuple(str(s) for s in rng.choice(TRAIN_ELEMENTS, size=2, replace=False))
    k = int(rng.integers(4, N_ATOMS - 3))
    return random_alloy(pair, {pair[0]: k, pair[1]: N_ATOMS - k}, rng)


def thermalise(atoms: Atoms, temperature: float, rng) -> Atoms:
    """The last frame of a short Langevin run at ``temperature`` (velocities drawn at 2T, since
    a harmonic solid shares its kinetic energy with the potential)."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    MaxwellBoltzmannDistribution(atoms, temperature_K=2 * temperature, rng=rng)
    Stationary(atoms)
    # fixcm=False: ASE's fixcm=True samples NVT slightly wrong; Stationary above removed the drift.
    Langevin(atoms, TIMESTEP, temperature_K=temperature, friction=FRICTION, fixcm=False, rng=rng).run(MD_STEPS)
    frame = Atoms(atoms.get_chemical_symbols(), atoms.get_positions(), cell=atoms.cell, pbc=atoms.pbc)
    return frame


def relaxed(atoms: Atoms) -> Atoms:
    atoms = atoms.copy()
    atoms.calc = EMT()
    FIRE(atoms, logfile=None).run(fmax=0.05, steps=300)
    return Atoms(atoms.get_chemical_symbols(), atoms.get_positions(), cell=atoms.cell, pbc=atoms.pbc)


def cluster(symbol: str, lattice: dict[str, float], rng) -> Atoms:
    """The 32 fcc sites nearest a random point of the unit cell, in a vacuum box."""
    a = lattice[symbol]
    crystal = bulk(symbol, "fcc", a=a, cubic=True) * (5, 5, 5)
    centre = crystal.cell.sum(axis=0) / 2 + rng.uniform(0, a, size=3)
    nearest = np.argsort(np.linalg.norm(crystal.positions - centre, axis=1), kind="stable")[:N_ATOMS]
    atoms = crystal[np.sort(nearest)]
    atoms.cell, atoms.pbc = np.zeros((3, 3)), True
    atoms.center(vacuum=VACUUM)
    return atoms


def slab(symbol: str, lattice: dict[str, float], rng) -> Atoms:
    build = fcc111 if rng.random() < 0.5 else fcc100
    atoms = build(symbol, size=(2, 2, N_ATOMS // 4), a=lattice[symbol], vacuum=VACUUM, periodic=True)
    atoms.info = {}
    atoms.set_tags(0)
    return atoms


def labelled(atoms: Atoms, info: dict) -> Atoms:
    """A fresh EMT's energy and forces on a copy, as a single-point record."""
    out = atoms.copy()
    out.calc = EMT()
    energy, forces = float(out.get_potential_energy()), out.get_forces().copy()
    out.calc = SinglePointCalculator(out, energy=energy, forces=forces)
    out.info = dict(info)
    return out


def make_test(split: str, index: int, lattice: dict[str, float], rng) -> tuple[Atoms, dict]:
    t = float(rng.uniform(*TRAIN_T))
    info = {"split": split}
    if split == "none":
        atoms = bulk_cell(training_symbols(rng), lattice, rng)
        info["kind"] = "bulk"
    elif split == "element":
        share = ELEMENT_SHARES[index % len(ELEMENT_SHARES)]
        new = str(HELD_OUT[(index // len(ELEMENT_SHARES)) % len(HELD_OUT)])
        k = round(share * N_ATOMS)
        host = str(rng.choice(TRAIN_ELEMENTS))
        atoms = bulk_cell(random_alloy((new, host), {new: k, host: N_ATOMS - k}, rng), lattice, rng)
        info.update(kind="bulk", held_out_share=share)
    elif split == "force_norm":
        t = float(rng.uniform(*HOT_T))
        atoms = bulk_cell(training_symbols(rng), lattice, rng)
        info["kind"] = "bulk"
    elif split == "connectivity":
        symbol = str(rng.choice(TRAIN_ELEMENTS))
        if index % 2:
            atoms, info["kind"] = cluster(symbol, lattice, rng), "cluster"
        else:
            atoms = slab(symbol, lattice, rng)
            info["kind"] = "slab" + ("111" if abs(atoms.cell[1, 0]) > 1e-9 else "100")
        atoms = relaxed(atoms)
    else:
        raise ValueError(split)
    info["temperature_K"] = t
    return thermalise(atoms, t, rng), info


def generate(out: Path, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    lattice = {s: emt_lattice_constant(s) for s in (*TRAIN_ELEMENTS, *HELD_OUT)}
    train = []
    for i in range(N_TRAIN):
        rng = np.random.default_rng([seed, 0, i])
        t = float(rng.uniform(*TRAIN_T))
        frame = thermalise(bulk_cell(training_symbols(rng), lattice, rng), t, rng)
        train.append(labelled(frame, {"sid": f"shift-train-{i:04d}", "split": "train", "kind": "bulk",
                                      "temperature_K": t}))
    test = []
    for g, (split, n) in enumerate(N_TEST.items()):
        for i in range(n):
            frame, info = make_test(split, i, lattice, np.random.default_rng([seed, 1, g, i]))
            test.append(labelled(frame, {"sid": f"shift-{split}-{i:03d}", **info}))

    out.mkdir(parents=True, exist_ok=True)
    files = {name: {"sha256": ase_json_db(out / name, images), "n": len(images)}
             for name, images in (("train.json", train), ("test.json", test))}
    manifest = {
        "name": "shift-mini", "label": LABEL,
        "description": (f"{LABEL}: not a published benchmark. 32-atom structures of the EMT metals with controlled "
                        f"shifts: train.json holds bulk {'/'.join(TRAIN_ELEMENTS)} and their binary alloys near "
                        f"room temperature; test.json holds controls (split none) and structures shifted on one "
                        f"axis each: element (held-out {'/'.join(HELD_OUT)}), force_norm ({HOT_T[0]:.0f}-"
                        f"{HOT_T[1]:.0f} K frames), connectivity (slabs and clusters). Energies and forces from "
                        "ASE's EMT."),
        "generator": "mlip_zoo.evaluators.shift.make_mini", "labelled_by": "emt", "seed": seed, "files": files,
        "splits": {"train": N_TRAIN, **N_TEST},
        "recipe": {"train_elements": list(TRAIN_ELEMENTS), "held_out_elements": list(HELD_OUT),
                   "n_atoms": N_ATOMS, "emt_lattice_constants": lattice, "train_temperature_K": list(TRAIN_T),
                   "hot_temperature_K": list(HOT_T), "strain": STRAIN, "md_steps": MD_STEPS,
                   "timestep_fs": TIMESTEP / units.fs, "friction_per_fs": FRICTION * units.fs,
                   "vacuum": VACUUM, "held_out_shares": list(ELEMENT_SHARES)},
        "energy": "total EMT energy, eV",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return {"manifest": manifest, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> None:
    default_out = Path(str(importlib.resources.files("mlip_zoo.configs"))) / "datasets" / "shift-mini"
    parser = argparse.ArgumentParser(description=f"Generate {LABEL} (controlled distribution shifts).")
    parser.add_argument("--out", type=Path, default=default_out, help=f"output folder (default {default_out})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = generate(args.out, args.seed)
    print(f"{LABEL} -> {args.out}  ({result['seconds']:.1f} s)")
    for name, entry in result["manifest"]["files"].items():
        size = (args.out / name).stat().st_size
        print(f"  {name}: {entry['n']} structures, {size / 1024:.0f} KiB, sha256 {entry['sha256']}")


if __name__ == "__main__":
    main()
