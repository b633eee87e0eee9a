"""Generate symmetry-mini, the small structure set the ``symmetry`` task runs on by default.

The symmetry checks need no reference labels, only structures that exercise them: periodic
cells with orthogonal and skewed (primitive fcc) lattices, ordered and random alloys, a slab
(periodic in two directions) and an isolated cluster, all made of elements ASE's EMT covers
(Al, Cu, Ag, Au, Ni, Pd, Pt) so EMT runs every check. Every structure is rattled (seeded) so
forces are far from zero and the force checks mean something. ASE's EMT energy jumps (slightly)
where a pair crosses its neighbour-list cutoff ``rc_list``; a rattle that leaves a pair within
``CUTOFF_MARGIN`` of it is redrawn (next sub-seed), so EMT, the exact reference that must pass
every check, is probed where it is smooth and the finite differences measure forces, not EMT's
cutoff. One small cell is marked
``nve=True``: the task runs its (costly) NVE drift check only on marked structures.

Written as extxyz (``symmetry.extxyz``; ``info`` keys ``id``, ``kind``, ``nve``) with a
``manifest.json`` holding the seed and the file's sha256. Byte-reproducible for a given seed and
ASE version. Run ``python -m mlip_zoo.evaluators.symmetry.make_mini [--out DIR] [--seed N]``.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk, fcc111
from ase.cluster import Icosahedron
from ase.io import write

from mlip_zoo.zoo.weights import sha256_of

LABEL = "symmetry-mini (generated structures, no labels)"
RATTLE = 0.05  # Å, standard deviation
CUTOFF_MARGIN = 0.03  # Å: far beyond the finite-difference displacements (2h = 6e-3 Å)


def _emt_cutoff_margin(atoms: Atoms) -> float:
    """Distance (Å) from any pair distance to EMT's neighbour-list cutoff."""
    from ase.calculators.emt import EMT
    from ase.neighborlist import neighbor_list

    probe = atoms.copy()
    probe.calc = EMT()
    probe.get_potential_energy()  # sets rc_list for these elements
    rc = probe.calc.rc_list
    d = neighbor_list("d", probe, rc + 1.0)
    return float(np.abs(d - rc).min()) if len(d) else np.inf


def structures(seed: int = 0) -> list[Atoms]:
    rng = np.random.default_rng([seed, 0])
    out: list[tuple[str, str, Atoms, bool]] = []

    cu = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1)
    out.append(("bulk-cu-fcc", "bulk", cu, True))
    al = bulk("Al", "fcc", a=4.05) * (2, 2, 2)  # primitive, skewed cell: rotations meet a non-orthogonal lattice
    out.append(("bulk-al-fcc-primitive", "bulk", al, False))
    cu3au = bulk("Cu", "fcc", a=3.92, cubic=True)  # 4% expanded: shells either side of EMT's cutoff
    cu3au[0].symbol = "Au"  # L1_2 Cu3Au
    out.append(("alloy-cu3au-l12", "alloy", cu3au * (2, 1, 1), False))
    random_alloy = bulk("Pd", "fcc", a=3.93, cubic=True) * (2, 1, 1)
    random_alloy.symbols = rng.choice(["Ni", "Pd", "Pt", "Ag"], size=len(random_alloy))
    out.append(("alloy-nipdptag-random", "alloy", random_alloy, False))
    slab = fcc111("Pt", size=(2, 2, 3), vacuum=6.0)
    slab.info = {}
    out.append(("slab-pt111", "slab", slab, False))
    cluster = Icosahedron("Ag", noshells=2)
    cluster.center(vacuum=6.0)
    cluster.pbc = False
    out.append(("cluster-ag13", "cluster", cluster, False))

    records = []
    for i, (ident, kind, ideal, nve) in enumerate(out):
        for k in range(100):
            atoms = Atoms(ideal.numbers, ideal.positions, cell=ideal.cell, pbc=ideal.pbc)  # no build metadata
            atoms.positions += np.random.default_rng([seed, 1, i, k]).normal(0.0, RATTLE, size=(len(atoms), 3))
            if _emt_cutoff_margin(atoms) >= CUTOFF_MARGIN:
                break
        else:
            raise RuntimeError(f"{ident}: no rattle in 100 draws keeps pairs {CUTOFF_MARGIN} Å from EMT's cutoff")
        atoms.info = {"id": ident, "kind": kind, "nve": nve}
        records.append(atoms)
    return records


def generate(out: Path, seed: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "symmetry.extxyz"
    images = structures(seed)
    write(path, images, format="extxyz")
    digest = sha256_of(path)
    manifest = {
        "name": "symmetry-mini", "label": LABEL,
        "description": (f"{LABEL}: rattled ({RATTLE} Å) bulk cells (Cu fcc, primitive Al fcc), alloys (Cu3Au L1_2, "
                        "random Ni/Pd/Pt/Ag), a Pt(111) slab and an Ag13 icosahedron, in EMT's elements. "
                        "Records with nve=True also get the NVE drift check."),
        "generator": "mlip_zoo.evaluators.symmetry.make_mini", "seed": seed,
        "files": {"symmetry.extxyz": {"sha256": digest, "n": len(images)}},
        "structures": {a.info["id"]: {"kind": a.info["kind"], "n_atoms": len(a), "pbc": [bool(p) for p in a.pbc],
                                      "nve": a.info["nve"]} for a in images},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    default_out = Path(str(importlib.resources.files("mlip_zoo.configs"))) / "datasets" / "symmetry-mini"
    parser = argparse.ArgumentParser(description=f"Generate {LABEL}.")
    parser.add_argument("--out", type=Path, default=default_out, help=f"output folder (default {default_out})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    m = generate(args.out, args.seed)
    entry = m["files"]["symmetry.extxyz"]
    print(f"{LABEL} -> {args.out}: {entry['n']} structures, sha256 {entry['sha256']}")
    for ident, s in m["structures"].items():
        print(f"  {ident}: {s['n_atoms']} atoms, pbc {s['pbc']}{', nve' if s['nve'] else ''}")


if __name__ == "__main__":
    main()
