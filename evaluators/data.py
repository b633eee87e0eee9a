"""Reading datasets as streams of ``ase.Atoms``, in the formats the reference data come in.

- extxyz (optionally gzipped): ``info`` carries ids and labels, ``move_mask`` the fixed atoms;
- ASE databases (``.db``, ``.json``) and fairchem v2's ``.aselmdb`` (through ase-db-backends);
- OC20's legacy LMDB of pickled PyG ``Data`` objects, only with ``trust_pickle=True``, because
  unpickling can run arbitrary code.

Records are yielded one at a time; nothing here holds a whole dataset in memory.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms

from mlip_zoo.errors import DatasetError, UntrustedDataError


@dataclass(frozen=True)
class Dataset:
    name: str  # shown next to every number: a mini set is never presented as the real one
    path: Path
    sha256: str
    n: int | None = None
    labelled_by: str | None = None  # the model key whose outputs are the labels (a pipeline check)


def datasets_dir() -> Path:
    return Path(str(importlib.resources.files("mlip_zoo.configs") / "datasets"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():  # LMDB folders: hash every file, in name order
        for p in sorted(path.rglob("*")):
            if p.is_file() and not p.name.endswith("-lock"):
                h.update(p.relative_to(path).as_posix().encode())
                h.update(sha256_file(p).encode())
        return h.hexdigest()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def resolve_dataset(default: str, default_file: str, override: str | Path | None = None) -> Dataset:
    """The task's embedded dataset (name + file under configs/datasets/), or a user's file."""
    if override is not None:
        path = Path(override).expanduser()
        if not path.exists():
            raise DatasetError(f"{path}: dataset not found (check --dataset)")
        return Dataset(name=path.name, path=path.resolve(), sha256=dataset_sha256(path))
    folder = datasets_dir() / default
    path = folder / default_file
    manifest = json.loads((folder / "manifest.json").read_text()) if (folder / "manifest.json").exists() else {}
    if not path.exists():
        how = (f"regenerate it with `python -m {manifest['generator']}`" if manifest.get("generator")
               else "reinstall mlip-zoo, which ships it")
        raise DatasetError(f"{path}: embedded dataset {default!r} is missing; {how}")
    entry = manifest.get("files", {}).get(default_file, {})
    for name, listed in manifest.get("files", {}).items():  # labels live beside the structures too
        if listed.get("sha256") and (digest := sha256_file(folder / name)) != listed["sha256"]:
            raise DatasetError(f"{folder / name}: sha256 {digest} differs from its manifest ({listed['sha256']}); "
                               "the embedded dataset was modified: regenerate it")
    return Dataset(name=manifest.get("label", default), path=path, sha256=dataset_sha256(path), n=entry.get("n"),
                   labelled_by=manifest.get("labelled_by"))


def dataset_sha256(path: Path) -> str:
    """What a result's numbers depend on: the file, or every file of a WBM layout."""
    from mlip_zoo.evaluators.discovery.wbm import WbmLayout, is_wbm_layout

    if is_wbm_layout(path):
        h = hashlib.sha256()
        for key, file in sorted(WbmLayout.find(path).files.items()):
            h.update(f"{key}:{sha256_file(file)}\n".encode())
        return h.hexdigest()
    return sha256_file(path)


def iter_records(path: Path, *, trust_pickle: bool = False) -> Iterator[Atoms]:
    """Yield the dataset's structures one by one, whatever the format."""
    from mlip_zoo.evaluators.discovery.wbm import is_wbm_layout, iter_wbm

    name = path.name.lower()
    if is_wbm_layout(path):  # Matbench Discovery: initial-atoms zip joined with its summary and references
        yield from iter_wbm(path)
    elif name.endswith((".extxyz", ".xyz", ".extxyz.gz", ".xyz.gz")):
        yield from _iter_extxyz(path)
    elif name.endswith(".aselmdb"):
        yield from _iter_ase_db(path, "aselmdb")
    elif name.endswith((".db", ".json")):
        yield from _iter_ase_db(path, None)
    elif name.endswith(".json.gz"):  # matbench-discovery's dimer curves, read by the diatomics task's package
        from mlip_zoo.evaluators.diatomics.data import iter_diatomics

        yield from iter_diatomics(path)
    elif name.endswith(".lmdb") or (path.is_dir() and any(path.glob("*.lmdb"))):
        if not trust_pickle:
            raise UntrustedDataError(
                f"{path}: a legacy OC20 LMDB stores pickled PyG objects, and unpickling can run arbitrary "
                "code. Convert it to .aselmdb/extxyz, or pass --trust-pickle if you trust its source.")
        yield from _iter_legacy_lmdb(path)
    else:
        raise DatasetError(f"{path}: unknown dataset format; use extxyz(.gz), an ASE db (.db/.json), "
                           ".aselmdb, a legacy OC20 .lmdb with --trust-pickle, a Matbench Discovery "
                           "WBM layout (folder or *.extxyz.zip) or its diatomic curves (*.json.gz)")


def _iter_extxyz(path: Path) -> Iterator[Atoms]:
    from ase.io import iread

    opener = gzip.open if path.name.endswith(".gz") else open
    n_read = 0
    try:
        with opener(path, "rt") as f:
            for atoms in iread(f, index=":", format="extxyz"):
                n_read += 1
                yield atoms
    except (ValueError, IndexError, KeyError, OSError, EOFError) as exc:
        raise DatasetError(f"{path}: corrupt extxyz at record {n_read} (0-based): {exc}") from exc


def _iter_ase_db(path: Path, kind: str | None) -> Iterator[Atoms]:
    import ase.db

    try:
        db = ase.db.connect(str(path), type=kind) if kind else ase.db.connect(str(path))
        for row in db.select():
            atoms = row.toatoms(add_additional_information=True)
            # fairchem's aselmdb keeps atoms.info in row.data; flatten it next to key_value_pairs
            atoms.info.update(atoms.info.pop("key_value_pairs", {}))
            for key, value in (atoms.info.pop("data", {}) or {}).items():
                if isinstance(value, np.ndarray) and value.ndim >= 1 and len(value) == len(atoms):
                    atoms.new_array(key, value)  # per-atom data (e.g. OC20's pos_relaxed)
                else:
                    atoms.info[key] = value
            atoms.info.setdefault("id", row.id)
            yield atoms
    except DatasetError:
        raise
    except Exception as exc:  # the backends raise their own types for a damaged file
        raise DatasetError(f"{path}: cannot read as an ASE database ({type(exc).__name__}: {exc})") from exc


def _iter_legacy_lmdb(path: Path) -> Iterator[Atoms]:
    import pickle

    import lmdb

    files = sorted(path.glob("*.lmdb")) if path.is_dir() else [path]
    for f in files:
        env = lmdb.open(str(f), subdir=False, readonly=True, lock=False, readahead=False, meminit=False)
        with env.begin() as txn:
            for key, value in txn.cursor():
                if key == b"length":
                    continue
                data = pickle.loads(value)  # trusted by the caller (--trust-pickle)
                yield _pyg_to_atoms(data, f"{f}:{key.decode(errors='replace')}")
        env.close()


def _pyg_to_atoms(data, where: str) -> Atoms:
    def get(name):
        value = getattr(data, name, None)
        if value is None:
            store = getattr(data, "__dict__", {}).get("_store")
            value = store.get(name) if store is not None else None
        return value.detach().cpu().numpy() if hasattr(value, "detach") else value

    try:
        numbers = np.asarray(get("atomic_numbers")).astype(int)
        atoms = Atoms(numbers=numbers, positions=np.asarray(get("pos"), dtype=float),
                      cell=np.asarray(get("cell"), dtype=float).reshape(3, 3), pbc=True)
    except Exception as exc:
        raise DatasetError(f"{where}: not an OC20 record (needs atomic_numbers, pos, cell): {exc}") from exc
    tags = get("tags")
    if tags is not None:
        atoms.set_tags(np.asarray(tags).astype(int))
    fixed = get("fixed")
    if fixed is not None:
        atoms.set_constraint(FixAtoms(mask=np.asarray(fixed).astype(bool)))
    for key in ("sid", "fid"):
        if get(key) is not None:
            atoms.info[key] = int(np.asarray(get(key)).reshape(-1)[0])
    y, forces = get("y"), get("force")
    if y is not None and forces is not None:
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms.calc = SinglePointCalculator(atoms, energy=float(np.asarray(y).reshape(-1)[0]),
                                           forces=np.asarray(forces, dtype=float))
    for key in ("y_init", "y_relaxed"):
        if get(key) is not None:
            atoms.info[key] = float(np.asarray(get(key)).reshape(-1)[0])
    if get("pos_relaxed") is not None:
        atoms.new_array("pos_relaxed", np.asarray(get("pos_relaxed"), dtype=float))
    return atoms


def free_mask(atoms: Atoms) -> np.ndarray:
    """Atoms that count for forces and positions: everything not fixed by FixAtoms."""
    fixed = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            fixed[c.get_indices()] = True
    return ~fixed


# The record's place in the whole dataset, stamped by ``number_records``. Evaluators name a record
# by its index within their shard; without this, id-less records of two shards would share ids.
RECORD_INDEX = "mlipzoo_record_index"


def number_records(records: Iterator[Atoms]) -> Iterator[tuple[int, Atoms]]:
    """``enumerate(records)``, stamping each record's dataset index for ``record_id``."""
    for index, atoms in enumerate(records):
        atoms.info[RECORD_INDEX] = index
        yield index, atoms


def record_id(atoms: Atoms, index: int) -> str:
    """A structure's id: ``sid`` (plus ``fid`` for trajectory frames), else another id key, else
    ``#<dataset index>`` (the stamped one; ``index`` only for records that were never numbered)."""
    info = atoms.info
    if "sid" in info:
        return f"{info['sid']}_{info['fid']}" if "fid" in info else str(info["sid"])
    for key in ("id", "material_id", "structure_id"):
        if key in info:
            return str(info[key])
    return f"#{info.get(RECORD_INDEX, index)}"
