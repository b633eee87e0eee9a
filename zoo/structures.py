"""What names a structure and which of its atoms count, decided once for the zoo and the tasks.

- ``record_id``: a structure's id (result rows, shard keys, error messages all use it);
- ``structure_label``: the same id as an error message says it (``sid=...``, ``#3 (Cu2O)``);
- ``free_mask``: the atoms not held by ``FixAtoms`` (forces and positions are scored, and test-time
  training is done, on these only).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms

# ``atoms.info`` keys that carry an id, in the order they are looked for (``fid`` joins ``sid``:
# a frame of a trajectory).
ID_KEYS = ("sid", "id", "material_id", "structure_id")

# The record's place in the whole dataset, stamped by ``evaluators.data.number_records``. A task
# names an id-less record by its index within its shard; without this, id-less records of two
# shards would share ids.
RECORD_INDEX = "mlipzoo_record_index"


def record_id(atoms: Atoms, index: int) -> str:
    """A structure's id: ``sid`` (plus ``fid`` for trajectory frames), else another of ``ID_KEYS``,
    else ``#<dataset index>`` (the stamped one; ``index`` only for records never numbered)."""
    info = atoms.info
    for key in ID_KEYS:
        if key in info:
            return f"{info['sid']}_{info['fid']}" if key == "sid" and "fid" in info else str(info[key])
    return f"#{info.get(RECORD_INDEX, index)}"


def structure_label(atoms: Atoms, index: int) -> str:
    """``record_id`` said in an error: ``<key>=<id>``, or ``#<index> (<formula>)`` without an id."""
    rid = record_id(atoms, index)
    key = next((k for k in ID_KEYS if k in atoms.info), None)
    return f"{key}={rid}" if key else f"{rid} ({atoms.get_chemical_formula()})"


def free_mask(atoms: Atoms) -> np.ndarray:
    """Atoms that count for forces and positions: everything not fixed by FixAtoms."""
    fixed = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            fixed[c.get_indices()] = True
    return ~fixed
