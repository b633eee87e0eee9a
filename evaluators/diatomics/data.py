"""Reading matbench-discovery's homonuclear dimer curves (``diatomics-dft.json.gz``).

Layout, after decompression: ``{functional: {"X-X": {distances, energies, forces, ...}}}`` with
``forces[point][atom][x, y, z]``. One record per dimer: an ``ase.Atoms`` X2 at its first
reference separation, with every functional's curve in ``info["reference"]``; the task picks
the functional it scores against, so one dataset serves PBE and r2SCAN models.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from mlip_zoo.errors import DatasetError
from mlip_zoo.evaluators.data import DatasetFormat


def iter_diatomics(path: Path) -> Iterator[Atoms]:
    """One ``Atoms`` per homonuclear dimer, in order of atomic number."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a gzipped JSON file ({exc})") from exc
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict) for v in data.values()):
        raise DatasetError(f"{path}: expected diatomic curves as {{functional: {{'X-X': curve}}}} "
                           "(matbench-discovery's diatomics-dft.json.gz layout)")
    curves: dict[str, dict[str, dict[str, list]]] = {}  # formula -> functional -> curve
    for functional, by_formula in data.items():
        for formula, curve in by_formula.items():
            curves.setdefault(formula, {})[functional] = _checked_curve(path, functional, formula, curve)
    for formula in sorted(curves, key=lambda f: atomic_numbers[f.split("-")[0]]):
        element = formula.split("-")[0]
        first = next(iter(curves[formula].values()))["distances"][0]
        atoms = Atoms([element, element], positions=[[0.0, 0.0, 0.0], [first, 0.0, 0.0]])
        atoms.info.update(id=formula, element=element, reference=curves[formula])
        yield atoms


def _checked_curve(path: Path, functional: str, formula: str, curve) -> dict[str, list]:
    where = f"{path}: {functional}/{formula}"
    first, sep, second = formula.partition("-")
    if not sep or first != second or first not in atomic_numbers:
        raise DatasetError(f"{where}: only homonuclear dimers named 'X-X' (X an element symbol) are supported")
    if not isinstance(curve, dict) or any(k not in curve for k in ("distances", "energies", "forces")):
        raise DatasetError(f"{where}: a curve needs distances, energies and forces")
    try:
        distances = np.asarray(curve["distances"], dtype=float)
        energies = np.asarray(curve["energies"], dtype=float)
        forces = np.asarray(curve["forces"], dtype=float)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{where}: distances, energies and forces must be numbers ({exc})") from None
    n = len(distances)
    if n < 2 or energies.shape != (n,) or forces.shape != (n, 2, 3):
        raise DatasetError(f"{where}: {n} distances need as many energies and forces[point][atom][xyz] "
                           f"(got energies {energies.shape}, forces {forces.shape})")
    if not (np.isfinite(distances).all() and np.isfinite(energies).all() and np.isfinite(forces).all()):
        raise DatasetError(f"{where}: non-finite distance, energy or force; drop those points from the file")
    if not np.all(np.diff(distances) > 0):
        raise DatasetError(f"{where}: distances must be strictly ascending")
    return {"distances": distances.tolist(), "energies": energies.tolist(), "forces": forces.tolist()}


def _is_curves_file(path: Path) -> bool:
    return not path.is_dir() and path.name.lower().endswith(".json.gz")


# Declared by the diatomics task (Evaluator.formats).
DIATOMICS_FORMAT = DatasetFormat(name="diatomics", description="Matbench Discovery's diatomic curves (*.json.gz)",
                                 matches=_is_curves_file, read=iter_diatomics)
