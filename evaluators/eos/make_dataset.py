"""Write ``dcdft``, the reference set of the ``eos`` task, from ASE's ``dcdft`` collection.

The collection (``ase/collections/dcdft.json``, shipped in the ase wheel, an ASE database) holds
the 71 elemental crystals of the Δ-gauge benchmark (Lejaeghere et al., Science 351, aad3000
(2016)) with their WIEN2k all-electron PBE equation of state as key-value pairs:
``wien2k_volume`` (V0, Å³/atom), ``wien2k_B`` (B0, GPa) and ``wien2k_Bp`` (B1 = dB/dP). They are
read through the database itself, row by row in its id order (H to Rn).

Written as extxyz (``dcdft.extxyz``): the crystal's cell, positions and initial magnetic moments
as the collection gives them, and ``info`` keys ``id`` (``dcdft-<symbol>``), ``wien2k_volume``,
``wien2k_B``, ``wien2k_Bp``. The id is prefixed, and no bare ``element`` key is written, because
ASE's extxyz reader turns the value ``F`` (fluorine) into the boolean False; the task reads the
element from the atoms themselves. ``manifest.json`` holds the file's sha256, the sha256 of the
collection file it came from, and the attribution. Byte-reproducible for a given ASE version.
Run ``python -m mlip_zoo.evaluators.eos.make_dataset [--out DIR]``.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
from pathlib import Path

from ase import Atoms
from ase.io import write

from mlip_zoo.zoo.weights import sha256_of

NAME = "dcdft-wien2k"  # a hyphen: setuptools would take a plain identifier for a package
FILE = "dcdft.extxyz"
LABEL = "dcdft (WIEN2k all-electron PBE)"
REFERENCE_KEYS = ("wien2k_volume", "wien2k_B", "wien2k_Bp")
CITATION = ("K. Lejaeghere et al., Reproducibility in density functional theory calculations of solids, "
            "Science 351, aad3000 (2016), doi:10.1126/science.aad3000")


def collection_file() -> Path:
    from ase.collections import dcdft

    return Path(dcdft.filename)


def structures() -> list[Atoms]:
    """The 71 crystals in the collection's database order, each with its WIEN2k EOS in ``info``."""
    import ase.db

    records = []
    for row in ase.db.connect(str(collection_file()), type="json").select(sort="id"):
        kvp = row.key_value_pairs
        missing = [k for k in ("name", *REFERENCE_KEYS) if k not in kvp]
        if missing:
            raise RuntimeError(f"{collection_file()}: row {row.id} lacks {', '.join(missing)}; "
                               "this ASE's dcdft collection is not the Δ-gauge one")
        crystal = row.toatoms()
        symbols = set(crystal.get_chemical_symbols())
        if symbols != {kvp["name"]}:
            raise RuntimeError(f"{collection_file()}: row {row.id} ({kvp['name']}) holds {sorted(symbols)}, "
                               "not one element")
        # A fresh Atoms: no calculator, constraints or database metadata in the file.
        atoms = Atoms(crystal.numbers, crystal.positions, cell=crystal.cell, pbc=crystal.pbc,
                      magmoms=crystal.get_initial_magnetic_moments() if crystal.has("initial_magmoms") else None)
        atoms.info = {"id": f"dcdft-{kvp['name']}", **{k: float(kvp[k]) for k in REFERENCE_KEYS}}
        records.append(atoms)
    return records


def generate(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    path = out / FILE
    images = structures()
    write(path, images, format="extxyz")
    source = collection_file()
    manifest = {
        "name": NAME, "label": LABEL,
        "description": (f"{LABEL}: the {len(images)} elemental crystals of the Δ-gauge benchmark (Z = 1-56, "
                        "71-84 and 86: H to Ba, Lu to Po, Rn) with their WIEN2k all-electron PBE "
                        "equation of state (V0, B0, B1). A real reference, not a pipeline check."),
        "energy": ("none: the set holds no energies, only each element's reference equation-of-state "
                   "parameters; a model is compared through the Birch-Murnaghan fit of its own energies"),
        "reference": {"wien2k_volume": "V0, Å³/atom", "wien2k_B": "B0, GPa", "wien2k_Bp": "B1 = dB/dP at V0"},
        "attribution": (f"{CITATION}; data from ASE's dcdft collection (ase/collections/dcdft.json, "
                        "LGPL-2.1-or-later), after the Δ project's WIEN2k.txt (molmod.ugent.be/deltacodesdft)"),
        "citation": CITATION,
        "source": {"file": "ase/collections/dcdft.json", "sha256": sha256_of(source)},
        "generator": "mlip_zoo.evaluators.eos.make_dataset",
        "files": {FILE: {"sha256": sha256_of(path), "n": len(images)}},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    default_out = Path(str(importlib.resources.files("mlip_zoo.configs"))) / "datasets" / NAME
    parser = argparse.ArgumentParser(description=f"Generate {LABEL} from ASE's dcdft collection.")
    parser.add_argument("--out", type=Path, default=default_out, help=f"output folder (default {default_out})")
    args = parser.parse_args(argv)
    entry = generate(args.out)["files"][FILE]
    print(f"{LABEL} -> {args.out}: {entry['n']} crystals, sha256 {entry['sha256']}")


if __name__ == "__main__":
    main()
