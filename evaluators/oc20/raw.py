"""OC20's raw S2EF layout, read as published: no conversion step.

An S2EF split (the folder ``s2ef_val_id.tar`` unpacks to) holds pairs ``N.extxyz`` + ``N.txt``,
either or both xz-compressed (``N.extxyz.xz``, ``N.txt.xz``, as the tarballs ship them). Frame
``i`` of the extxyz belongs to line ``i`` of the txt, ``random<sid>,frame<fid>,<reference energy>``.
The extxyz energy is the total DFT energy; ``total - reference`` is the adsorption energy OC20's
S2EF targets are (fairchem's ``preprocess_ef --ref-energy`` subtracts it).

Each record is the extxyz frame as ASE reads it (energy and forces in ``atoms.calc.results``,
``tags``, ``move_mask`` as ``FixAtoms``), with ``info``:

- ``sid``, ``fid`` (ints, from the txt): the record id is ``<sid>_<fid>``, as fairchem's S2EF
  submissions name frames;
- ``energy_kind = "total"`` and ``reference_energy`` (eV, the txt's float);
- ``split``: the subsplit (``id``, ``ood_ads``, ``ood_cat``, ``ood_both``), from a
  ``manifest.json`` in the folder (``split`` for every file, or ``splits``: file stem -> split),
  else from the folder's name (``s2ef_val_id`` -> ``id``); absent when neither says.

Files are read one after the other (numeric stems in numeric order), frame by frame: memory holds
one frame and one txt line, whatever the split's size.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

from ase import Atoms

from mlip_zoo.errors import DatasetError
from mlip_zoo.evaluators.data import BoundedText, DatasetFormat, iter_extxyz, oc20_split, sha256_file

_XYZ = (".extxyz", ".extxyz.xz")
_TXT = (".txt", ".txt.xz")
_LINE = re.compile(r"^random(\d+),frame(\d+),(\S+)$")
MANIFEST = "manifest.json"


def _stem(name: str, suffixes: tuple[str, ...]) -> str | None:
    return next((name[: -len(s)] for s in sorted(suffixes, key=len, reverse=True) if name.endswith(s)), None)


def pairs(folder: Path) -> list[tuple[str, Path, Path]]:
    """(stem, extxyz, txt) of every pair in the folder, numeric stems first in numeric order; a
    file without its partner is an error naming it."""
    xyz: dict[str, Path] = {}
    txt: dict[str, Path] = {}
    for p in folder.iterdir():
        for found, suffixes in ((xyz, _XYZ), (txt, _TXT)):
            stem = _stem(p.name, suffixes)
            if stem is not None and p.is_file():
                if stem in found:
                    raise DatasetError(f"{folder}: both {found[stem].name} and {p.name}; keep one of them")
                found[stem] = p
    lonely = sorted(set(xyz) ^ set(txt))
    if lonely:
        stem = lonely[0]
        have, want = (xyz[stem], f"{stem}.txt[.xz]") if stem in xyz else (txt[stem], f"{stem}.extxyz[.xz]")
        raise DatasetError(f"{have}: no {want} beside it; an OC20 S2EF folder holds N.extxyz + N.txt pairs "
                           "(fetch the split again, or remove the stray file)")
    order = sorted(xyz, key=lambda s: (0, int(s), "") if s.isdigit() else (1, 0, s))
    return [(s, xyz[s], txt[s]) for s in order]


def is_s2ef_raw(path: Path) -> bool:
    """A folder with at least one N.extxyz[.xz] + N.txt[.xz] pair (from names alone)."""
    if not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()}
    return any(_stem(n, _TXT) is not None and any(f"{_stem(n, _TXT)}{s}" in names for s in _XYZ) for n in names)


def _splits(folder: Path) -> tuple[dict[str, str], str | None]:
    """Per-stem splits and the folder's default split (manifest, else the folder's name)."""
    path = folder / MANIFEST
    if not path.exists():
        return {}, oc20_split(folder.name, folder.parent.name)
    try:
        manifest = json.loads(path.read_text())
        per_file = {str(k): str(v) for k, v in manifest.get("splits", {}).items()}
        default = manifest.get("split")
    except (ValueError, AttributeError) as exc:
        raise DatasetError(f"{path}: not a JSON object with 'split' or 'splits' (stem -> split): {exc}") from None
    return per_file, (str(default) if default is not None else oc20_split(folder.name, folder.parent.name))


def _parse(line: str, where: str) -> tuple[int, int, float]:
    match = _LINE.match(line.strip())
    try:
        if match is None:
            raise ValueError("no match")
        return int(match.group(1)), int(match.group(2)), float(match.group(3))
    except ValueError:
        raise DatasetError(f"{where}: expected 'random<sid>,frame<fid>,<reference energy>', got "
                           f"{line.strip()[:80]!r}") from None


def iter_s2ef_raw(folder: Path) -> Iterator[Atoms]:
    folder = Path(folder)
    per_file, default = _splits(folder)
    found = pairs(folder)
    unknown = sorted(set(per_file) - {stem for stem, _, _ in found})
    if unknown:
        raise DatasetError(f"{folder / MANIFEST}: 'splits' names {', '.join(unknown)}, which are not pairs here")
    for stem, xyz, txt in found:
        split = per_file.get(stem, default)
        with BoundedText(txt) as lines:
            frames = iter_extxyz(xyz)
            n = 0
            for atoms in frames:
                line = lines.readline()
                if not line:
                    raise DatasetError(f"{xyz} has {n + 1 + sum(1 for _ in frames)} frames but {txt} has {n} lines; "
                                       "each frame needs its txt line: fetch the split again")
                sid, fid, reference = _parse(line, f"{txt}:{n + 1}")
                atoms.info.update(sid=sid, fid=fid, energy_kind="total", reference_energy=reference)
                if split is not None:
                    atoms.info["split"] = split
                n += 1
                yield atoms
            rest = sum(1 for _ in iter(lines.readline, ""))
            if rest:
                raise DatasetError(f"{xyz} has {n} frames but {txt} has {n + rest} lines; "
                                   "each frame needs its txt line: fetch the split again")


def s2ef_raw_sha256(folder: Path) -> str:
    """Every file the reader reads (the pairs and the manifest), keyed by name."""
    h = hashlib.sha256()
    files = [p for _, *two in pairs(folder) for p in two]
    if (folder / MANIFEST).exists():
        files.append(folder / MANIFEST)
    for p in sorted(files, key=lambda p: p.name):
        h.update(f"{p.name}:{sha256_file(p)}\n".encode())
    return h.hexdigest()


# Declared by the OC20 tasks (Evaluator.formats).
S2EF_RAW_FORMAT = DatasetFormat(
    name="oc20-s2ef-raw", description="an OC20 raw S2EF folder (N.extxyz[.xz] + N.txt[.xz] pairs)",
    matches=is_s2ef_raw, read=iter_s2ef_raw, sha256=s2ef_raw_sha256,
    folder="an OC20 raw S2EF folder (N.extxyz[.xz] + N.txt[.xz] pairs)")
