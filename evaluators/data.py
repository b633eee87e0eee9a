"""Reading datasets as streams of ``ase.Atoms``, in the formats the reference data come in.

- extxyz (optionally gzip- or xz-compressed): ``info`` carries ids and labels, ``move_mask`` the
  fixed atoms;
- ASE databases (``.db``, ``.json``) and fairchem v2's ``.aselmdb`` (through ase-db-backends);
- OC20's legacy LMDB of pickled PyG ``Data`` objects, only with ``trust_pickle=True``, because
  unpickling can run arbitrary code (IS2RE records hold adsorption energies: ``energy_kind``);
- the layouts a task's own package reads (``DatasetFormat``: OC20's raw S2EF folders, Matbench
  Discovery's WBM folders, its dimer curves), which tasks declare as ``Evaluator.formats``; they
  are consulted first.

Records are yielded one at a time; nothing here holds a whole dataset in memory.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import io
import json
import lzma
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms

from mlip_zoo.errors import DatasetError, UntrustedDataError
# The id rule and the free-atom mask live in zoo (the zoo names structures in its errors too);
# tasks import them from here, beside the records they apply to.
from mlip_zoo.zoo.structures import RECORD_INDEX, free_mask, record_id  # noqa: F401
from mlip_zoo.zoo.weights import sha256_of


@dataclass(frozen=True)
class Dataset:
    name: str  # shown next to every number: a mini set is never presented as the real one
    path: Path
    sha256: str
    n: int | None = None
    labelled_by: str | None = None  # the model key whose outputs are the labels (a pipeline check)


@dataclass(frozen=True)
class DatasetFormat:
    """A dataset layout a task's package reads: recognised from the path alone (never its
    contents, so nothing is hashed or read that could not be), read as a stream of records, and
    hashed as a whole. Tasks declare theirs as ``Evaluator.formats``."""

    name: str  # what ``dataset_format`` returns
    description: str  # listed when a path is in no known format
    matches: Callable[[Path], bool]  # given a regular file or a folder
    read: Callable[[Path], Iterator[Atoms]]
    sha256: Callable[[Path], str] | None = None  # what results depend on; default: ``sha256_file``
    folder: str | None = None  # how a folder in this format is named; None: files only


def _task_formats() -> tuple[DatasetFormat, ...]:
    from mlip_zoo.evaluators.base import dataset_formats

    return dataset_formats()


def datasets_dir() -> Path:
    return Path(str(importlib.resources.files("mlip_zoo.configs") / "datasets"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    _check_kind(path)  # a FIFO or a device would be read forever
    if path.is_dir():  # LMDB folders: hash every file, in name order
        for p in sorted(path.rglob("*")):
            if p.is_file() and not p.name.endswith("-lock"):
                h.update(p.relative_to(path).as_posix().encode())
                h.update(sha256_file(p).encode())
        return h.hexdigest()
    return sha256_of(path)


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


def _check_kind(path: Path) -> None:
    """A dataset is a regular file or a folder; never a FIFO, socket or device (read forever)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the dataset ({exc.strerror or exc}); check --dataset") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        folders = " or ".join([*(f.folder for f in _task_formats() if f.folder), "a legacy OC20 LMDB"])
        raise DatasetError(f"{path}: not a regular file (a FIFO, socket or device); give --dataset a dataset file, "
                           f"or a folder holding {folders}")


GENERIC_FORMATS = ("extxyz(.gz/.xz), an ASE db (.db/.json), .aselmdb, a legacy OC20 .lmdb (file or folder of them) with "
                   "--trust-pickle")


def _formats_hint() -> str:
    """Every readable format, for the message of a path in none of them."""
    named = [GENERIC_FORMATS, *(f.description for f in _task_formats())]
    return ", ".join(named[:-1]) + " or " + named[-1] if len(named) > 1 else named[0]


def _task_format(kind: str) -> DatasetFormat | None:
    return next((f for f in _task_formats() if f.name == kind), None)


def dataset_format(path: Path) -> str:
    """The dataset's format from the kind of path and its name, without reading its contents: a
    task's format (``Evaluator.formats``: wbm, diatomics...), else extxyz, aselmdb, asedb or
    legacy-lmdb. Checked before anything hashes or reads."""
    _check_kind(path)
    name = path.name.lower()
    if (task_format := next((f for f in _task_formats() if f.matches(path)), None)) is not None:
        return task_format.name
    if path.is_dir():  # only the layouts that are folders
        if name.endswith(".lmdb") or any(path.glob("*.lmdb")):
            return "legacy-lmdb"
        folders = " nor ".join([*(f.folder for f in _task_formats() if f.folder), "a folder of legacy OC20 *.lmdb files"])
        raise DatasetError(f"{path}: a folder, and neither {folders}; give --dataset one dataset file instead: "
                           f"{_formats_hint()}")
    if name.endswith(tuple(f"{stem}{z}" for stem in (".extxyz", ".xyz") for z in ("", ".gz", ".xz"))):
        return "extxyz"
    if name.endswith(".aselmdb"):
        return "aselmdb"
    if name.endswith((".db", ".json")):
        return "asedb"
    if name.endswith(".lmdb"):
        return "legacy-lmdb"
    raise DatasetError(f"{path}: unknown dataset format; use {_formats_hint()}")


def dataset_sha256(path: Path) -> str:
    """What a result's numbers depend on: the file, or what its format says (every file of a WBM
    layout). The path's kind and format are checked first: nothing is hashed that could not be read."""
    task_format = _task_format(dataset_format(path))
    if task_format is not None and task_format.sha256 is not None:
        return task_format.sha256(path)
    return sha256_file(path)


def iter_records(path: Path, *, trust_pickle: bool = False) -> Iterator[Atoms]:
    """Yield the dataset's structures one by one, whatever the format."""
    kind = dataset_format(path)
    if (task_format := _task_format(kind)) is not None:
        yield from task_format.read(path)
    elif kind == "extxyz":
        yield from iter_extxyz(path)
    elif kind == "aselmdb":
        yield from _iter_ase_db(path, "aselmdb")
    elif kind == "asedb":
        yield from _iter_ase_db(path, None)
    else:  # legacy-lmdb
        if not trust_pickle:
            raise UntrustedDataError(
                f"{path}: a legacy OC20 LMDB stores pickled PyG objects, and unpickling can run arbitrary "
                "code. Convert it to .aselmdb/extxyz, or pass --trust-pickle if you trust its source.")
        yield from _iter_legacy_lmdb(path)


# Bounds on reading text data, so a small file cannot take the memory of the machine (a
# decompression bomb): a line is at most MAX_LINE characters (real ones are < 1 kB; ase would hold
# a newline-free stream as one string), and a .gz/.xz may decompress to at most PACKED_RATIO times
# its own size (or PACKED_FLOOR bytes, whichever is more): extxyz compresses 3-10x, while deflate
# and LZMA reach ~1000x only on degenerate input. Decompression is streamed, so memory stays at a
# line and a record.
MAX_LINE = 4 << 20
PACKED_RATIO = 50
PACKED_FLOOR = 32 << 20


class BoundedText:
    """Lines of a text file, plain or .gz/.xz, refusing over-long ones and a compressed stream that
    decompresses past its cap. A context manager; ``readline`` as a file's."""

    def __init__(self, path: Path):
        self.path, self.cap = path, None
        if path.name.endswith((".gz", ".xz")):
            self.raw = gzip.open(path, "rb") if path.name.endswith(".gz") else lzma.open(path, "rb")
            self.cap = max(PACKED_FLOOR, PACKED_RATIO * os.path.getsize(path))
            self.text = io.TextIOWrapper(self.raw, encoding="utf-8")
        else:
            self.raw = self.text = open(path, encoding="utf-8")

    def __enter__(self) -> BoundedText:
        return self

    def __exit__(self, *exc) -> None:
        self.text.close()

    def readline(self) -> str:
        line = self.text.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise DatasetError(f"{self.path}: a line longer than {MAX_LINE >> 20} MiB (no newline); not a text data "
                               "file: check the file, or fetch it again")
        if self.cap is not None and self.raw.tell() > self.cap:
            raise DatasetError(f"{self.path}: decompresses to more than {self.cap / 2**20:.3g} MiB ({PACKED_RATIO}x "
                               "its size): refused as a likely decompression bomb; if it is genuine, decompress it "
                               "yourself and pass the uncompressed file")
        return line


def _xyz_frames(f: BoundedText) -> Iterator[Atoms]:
    """ase's extxyz frames, read forward only: ase's own reader first scans the whole file and then
    seeks back, which re-decompresses a .gz from its start for every frame. Same grammar: a blank
    line ends the file; up to 3 VEC lines follow a frame's atoms."""
    from ase.io.extxyz import XYZError, _read_xyz_frame

    line = f.readline()
    while line.strip():
        try:
            natoms = int(line)
        except ValueError as exc:
            raise XYZError(f"expected an xyz header (the number of atoms), got {line.strip()[:80]!r}") from exc
        lines = []
        for _ in range(1 + natoms):
            lines.append(next_line := f.readline())
            if not next_line:
                raise XYZError(f"file ends inside a frame of {natoms} atoms")
        nvec = 0
        line = f.readline()
        while line.lstrip().startswith("VEC"):
            lines.append(line)
            nvec += 1
            if nvec > 3:
                raise XYZError("more than 3 VECX entries")
            line = f.readline()
        yield _read_xyz_frame(iter(lines), natoms, nvec=nvec)


def iter_extxyz(path: Path) -> Iterator[Atoms]:
    """The frames of an extxyz file (plain, .gz or .xz), one at a time; a DatasetError naming the
    file and the frame for anything unreadable."""
    n_read = 0
    try:
        with BoundedText(path) as f:
            for atoms in _xyz_frames(f):
                n_read += 1
                yield atoms
    except DatasetError:
        raise
    except (ValueError, IndexError, KeyError, OSError, EOFError, lzma.LZMAError) as exc:
        raise DatasetError(f"{path}: corrupt extxyz at record {n_read} (0-based): {exc}") from exc


_LMDB_MAGIC = 0xBEEFC0DE


def _check_lmdb_whole(path: Path) -> None:
    """LMDB memory-maps its file: a truncated one is read past its end and the process dies of
    SIGBUS (exit 135) without a word. Its meta pages (64-bit layout: magic at byte 16, page size
    at 40, last page and transaction id at 136) say how long it must be; check that first."""
    import struct

    metas, psize = [], 0
    with open(path, "rb") as f:
        for page in range(2):  # two meta pages; the one with the newer transaction is current
            f.seek(page * psize)
            head = f.read(152)
            if len(head) < 152 or struct.unpack_from("<I", head, 16)[0] != _LMDB_MAGIC:
                break
            psize = psize or struct.unpack_from("<I", head, 40)[0]
            metas.append(struct.unpack_from("<QQ", head, 136))
            if psize < 512 or psize & (psize - 1):
                return  # not a layout this check knows: leave the verdict to the backend
    if not metas:
        return  # not LMDB at all: the backend says so cleanly
    need = (max(metas, key=lambda m: m[1])[0] + 1) * psize
    if (size := path.stat().st_size) < need:
        raise DatasetError(f"{path}: truncated LMDB file ({size} bytes; its last transaction needs {need}): "
                           "the copy or download was cut short; fetch the file again")


def _iter_ase_db(path: Path, kind: str | None) -> Iterator[Atoms]:
    import ase.db

    try:
        if kind == "aselmdb":
            from ase_db_backends.aselmdb import LMDBDatabase

            _check_lmdb_whole(path)
            # Read-only and without ASE's lock file, which would be written beside the dataset
            # (and fail on a read-only mount).
            db = LMDBDatabase(path, readonly=True, use_lock_file=False)
        else:
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


# OC20's subsplits, as its files and folders name them (``s2ef_val_id``, ``val_ood_ads``,
# ``test_ood_both``); records carry the subsplit alone (``id``...), as the task configs list them.
_OC20_SPLIT = re.compile(r"^(?:s2ef_|is2re_)?(?:val|test)_(id|ood_ads|ood_cat|ood_both)$")


def oc20_split(*names: str) -> str | None:
    """The OC20 subsplit the first matching name (a folder's, a file's stem) says, else None."""
    return next((m.group(1) for name in names if (m := _OC20_SPLIT.match(name))), None)


def _iter_legacy_lmdb(path: Path) -> Iterator[Atoms]:
    import pickle

    import lmdb

    files = sorted(path.glob("*.lmdb")) if path.is_dir() else [path]
    for f in files:
        split = oc20_split(f.parent.name)  # fairchem's is2re/all/val_id/data.lmdb
        env = lmdb.open(str(f), subdir=False, readonly=True, lock=False, readahead=False, meminit=False)
        with env.begin() as txn:
            for key, value in txn.cursor():
                if key == b"length":
                    continue
                data = pickle.loads(value)  # trusted by the caller (--trust-pickle)
                atoms = _pyg_to_atoms(data, f"{f}:{key.decode(errors='replace')}")
                if split is not None:
                    atoms.info.setdefault("split", split)
                yield atoms
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
    if "y_relaxed" in atoms.info:  # OC20's IS2RE LMDBs hold adsorption energies (no reference is stored)
        atoms.info["energy_kind"] = "adsorption"
    if get("pos_relaxed") is not None:
        atoms.new_array("pos_relaxed", np.asarray(get("pos_relaxed"), dtype=float))
    return atoms


def number_records(records: Iterator[Atoms]) -> Iterator[tuple[int, Atoms]]:
    """``enumerate(records)``, stamping each record's dataset index for ``record_id``."""
    for index, atoms in enumerate(records):
        atoms.info[RECORD_INDEX] = index
        yield index, atoms

