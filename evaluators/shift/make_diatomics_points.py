"""Generate diatomics-points: single points of the VASP PBE dimer curves, as labelled structures.

The ``ood-shift-mptrj`` task's test set: real DFT labels (matbench-discovery's homonuclear dimer
curves, ``configs/datasets/diatomics-vasp``, VASP 6 PBE), no model in the loop. For every PBE
curve, four points by a fixed rule (no randomness):

- ``minimum``: the lowest-energy separation r_min (forces near zero);
- ``stretched``: the first separation at or beyond 1.1 r_min (the bond pulled);
- ``wall-1eV`` / ``wall-5eV``: the largest separation inside r_min whose energy is at least
  1 / 5 eV above the minimum (the repulsive wall, large forces).

A point the curve lacks (a curve that never climbs 5 eV, a minimum at the last separation) is left
out, and a point two rules pick is kept once. Curves the diatomics task does not compare against
(SCF branch changes: ``reference_is_jumpy``, at PBE Pr, Pm, Sm, Tb-Tm) are left out: their
points may sit on the wrong branch. Elements absent from MPtrj stay: they are the element shift.

Each point is X2 in the diatomics task's periodic cubic box (50 Å), atom 0 at its centre and atom
1 on +x, with the PBE total energy and forces (eV, eV/Å; no MP2020 corrections) in an extxyz file;
``split`` is the element's block (s, p, d, f), ``point`` the rule. The file is byte-reproducible
for the source file and the ASE version. Run ``python -m mlip_zoo.evaluators.shift.make_diatomics_points
[--out DIR]``.
"""

from __future__ import annotations

import argparse
import importlib.resources
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from pymatgen.core import Element

from mlip_zoo.evaluators.data import resolve_dataset, sha256_file
from mlip_zoo.evaluators.diatomics.data import iter_diatomics
from mlip_zoo.evaluators.diatomics.tasks import Protocol, reference_is_jumpy

LABEL = "diatomics points (VASP PBE, matbench-discovery)"
SOURCE, SOURCE_FILE = "diatomics-vasp", "diatomics-dft.json.gz"
FILE = "points.extxyz"
FUNCTIONAL = "PBE"
STRETCH = 1.1  # the stretched point: first separation at or beyond this many r_min
WALL_HEIGHTS = (1.0, 5.0)  # eV above the minimum: wall points


def pick_points(distances: np.ndarray, energies: np.ndarray) -> dict[str, int]:
    """Point name -> index on the curve, by the rule of the module doc (each index once)."""
    m = int(np.argmin(energies))
    picks = {"minimum": m}
    stretched = np.flatnonzero(distances >= STRETCH * distances[m])
    if stretched.size:
        picks["stretched"] = int(stretched[0])
    for height in WALL_HEIGHTS:
        wall = np.flatnonzero(energies[:m] - energies[m] >= height)
        if wall.size:
            picks[f"wall-{height:g}eV"] = int(wall[-1])
    kept: dict[str, int] = {}
    for name, index in picks.items():
        if index not in kept.values():
            kept[name] = index
    return kept


def points(source: Path, box: float) -> tuple[list[Atoms], list[str]]:
    """The labelled single points, and the elements left out for a jumpy reference curve."""
    protocol, images, jumpy = Protocol(), [], []
    c = box / 2
    for dimer in iter_diatomics(source):
        element, curve = dimer.info["element"], dimer.info["reference"].get(FUNCTIONAL)
        if curve is None:
            continue
        r, e, f = (np.asarray(curve[k], dtype=float) for k in ("distances", "energies", "forces"))
        if reference_is_jumpy(element, r, e, protocol):
            jumpy.append(element)
            continue
        for name, i in pick_points(r, e).items():
            atoms = Atoms([element, element], positions=[[c, c, c], [c + r[i], c, c]], cell=[box] * 3, pbc=True)
            atoms.calc = SinglePointCalculator(atoms, energy=float(e[i]), forces=f[i])
            atoms.info.update(id=f"{element}2-{name}", split=Element(element).block, point=name,
                              distance=float(r[i]))
            images.append(atoms)
    return images, jumpy


def generate(out: Path) -> dict:
    source = resolve_dataset(SOURCE, SOURCE_FILE)  # checked against its manifest
    box = Protocol().box
    images, jumpy = points(source.path, box)
    buffer = io.StringIO()
    write(buffer, images, format="extxyz")
    out.mkdir(parents=True, exist_ok=True)
    (out / FILE).write_text(buffer.getvalue())
    source_manifest = json.loads((source.path.parent / "manifest.json").read_text())
    manifest = {
        "name": "diatomics-points",
        "label": LABEL,
        "description": (f"{len(images)} single points of matbench-discovery's VASP 6 {FUNCTIONAL} homonuclear dimer "
                        "curves (configs/datasets/diatomics-vasp): per element, the minimum, the first point at or "
                        f"beyond {STRETCH:g} r_min and the wall points {' and '.join(f'{h:g}' for h in WALL_HEIGHTS)} eV "
                        "above the minimum, each X2 in a periodic cubic box with its DFT energy and forces. Real "
                        "labels, no model in the loop. Curves with SCF branch changes are left out."),
        "energy": "total VASP PBE energy of the dimer, eV (no isolated-atom reference, no MP2020 corrections); "
                  "forces eV/Å",
        "files": {FILE: {"n": len(images), "sha256": sha256_file(out / FILE)}},
        "generator": "mlip_zoo.evaluators.shift.make_diatomics_points",
        "recipe": {"functional": FUNCTIONAL, "box": box, "stretch": STRETCH, "wall_heights": list(WALL_HEIGHTS),
                   "left_out_jumpy": jumpy},
        "splits": dict(sorted(Counter(a.info["split"] for a in images).items())),
        "points": dict(sorted(Counter(a.info["point"] for a in images).items())),
        "source": {**{k: source_manifest["source"][k] for k in ("repository", "path", "commit", "license")},
                   "sha256": source.sha256,
                   "attribution": "Janosh Riebesell and the Matbench Discovery contributors (Matbench Discovery, "
                                  "https://matbench-discovery.materialsproject.org): the dimer curves' points, "
                                  "values unchanged."},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    default_out = Path(str(importlib.resources.files("mlip_zoo.configs"))) / "datasets" / "diatomics-points"
    parser = argparse.ArgumentParser(description=f"Generate {LABEL}.")
    parser.add_argument("--out", type=Path, default=default_out, help=f"output folder (default {default_out})")
    args = parser.parse_args(argv)
    manifest = generate(args.out)
    entry = manifest["files"][FILE]
    print(f"{LABEL} -> {args.out}: {entry['n']} structures, sha256 {entry['sha256']}")


if __name__ == "__main__":
    main()
