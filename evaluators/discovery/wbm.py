"""The Matbench Discovery data in its published layout, read as a stream of initial structures.

The real files (figshare, listed with their md5 in matbench-discovery's ``data-files.yml``):

- ``wbm_initial_atoms``: a zip of extxyz files, one per ``material_id`` (the unrelaxed inputs);
- ``wbm_relaxed_atoms``: the same for the DFT-relaxed structures (geo-opt reference);
- ``wbm_summary``: csv(.gz), one row per material (DFT formation energy, hull distance, prototype);
- ``wbm_computed_structure_entries``: json(l)(.gz/.bz2) of pymatgen ``ComputedStructureEntry``
  dicts, whose run parameters the MP2020 corrections need;
- ``mp_elemental_ref_entries``: json(.gz) map element -> lowest-energy MP ``ComputedEntry``;
- ``mp_patched_phase_diagram``: a pickled pymatgen ``PatchedPhaseDiagram`` (the MP hull);
- ``mp_computed_structure_entries``: the MP entries that hull is built from (not fetched by
  default: the metrics need neither).

A dataset is a folder holding these (matbench-discovery's ``data/`` with ``wbm/`` and ``mp/`` below
it, or a flat folder), or the initial-atoms zip inside one. A ``manifest.json`` beside them may
name the files (``layout``) and declare ``labels`` (our generated sets say ``EMT``).

Each yielded ``Atoms`` is an initial structure whose ``info`` carries what the task needs to
score it: ``material_id``, ``wbm`` (DFT formation energy, hull distance, unique-prototype flag),
``dft_relaxed`` (the reference structure, when the file is present), ``e_refs`` (elemental
reference energies of its elements), ``energy_corrections`` and, for MP2020, ``cse_parameters``.
The phase diagram is never unpickled here: the hull distances the metrics use are in the summary.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ase import Atoms

from mlip_zoo.errors import DatasetError
from mlip_zoo.evaluators.data import DatasetFormat, sha256_file


@dataclass(frozen=True)
class DataFile:
    key: str
    path: str  # where matbench-discovery's DataFiles put it, relative to its data/ folder
    url: str
    md5: str
    patterns: tuple[str, ...]  # how to find a renamed copy (our generated sets use undated names)
    required: bool


# Facts from matbench-discovery's data-files.yml (figshare URLs and published md5 sums).
WBM_FILES: dict[str, DataFile] = {f.key: f for f in (
    DataFile("wbm_initial_atoms", "wbm/2024-08-04-wbm-initial-atoms.extxyz.zip",
             "https://figshare.com/files/48169597", "2a292211ca6acb30ed8416178d644098",
             ("*wbm-initial-atoms*.extxyz.zip",), True),
    DataFile("wbm_relaxed_atoms", "wbm/2024-08-04-wbm-relaxed-atoms.extxyz.zip",
             "https://figshare.com/files/48169600", "4726643ac0dfbab69a4284454c891e68",
             ("*wbm-relaxed-atoms*.extxyz.zip",), False),
    DataFile("wbm_summary", "wbm/2023-12-13-wbm-summary.csv.gz",
             "https://figshare.com/files/64706751", "1555268d3aa59d20262cb9d01ce0994b",
             ("*wbm-summary*.csv.gz", "*wbm-summary*.csv"), True),
    DataFile("wbm_computed_structure_entries", "wbm/2022-10-19-wbm-computed-structure-entries.jsonl.gz",
             "https://figshare.com/files/53161832", "655b7a9c368e136dd8747f1ef8002e7a",
             ("*wbm-computed-structure-entries*.json*",), False),
    DataFile("mp_elemental_ref_entries", "mp/2023-02-07-mp-elemental-reference-entries.json.gz",
             "https://figshare.com/files/40387775", "6e93b6f38d6e27d6c811d3cafb23a070",
             ("*mp-elemental-reference-entries*.json*",), True),
    DataFile("mp_computed_structure_entries", "mp/2023-02-07-mp-computed-structure-entries.json.gz",
             "https://figshare.com/files/40344436", "76fc748db6b175bb80de4c276d27c235",
             ("*mp-computed-structure-entries*.json*",), False),
    DataFile("mp_patched_phase_diagram", "mp/2023-02-07-ppd-mp.pkl.gz",
             "https://figshare.com/files/48241624", "60d19d691fa1d338aa496a40a9641bef",
             ("*ppd-mp*.pkl.gz",), False),
)}

# The summary columns the metrics read (matbench-discovery's names).
COL_ID = "material_id"
COL_E_FORM = "e_form_per_atom_mp2020_corrected"  # DFT formation energy, eV/atom
COL_EACH = "e_above_hull_mp2020_corrected_ppd_mp"  # DFT hull distance vs the MP hull, eV/atom
COL_UNIQUE = "unique_prototype"
SUMMARY_COLUMNS = (COL_ID, COL_E_FORM, COL_EACH, COL_UNIQUE)


def _open_text(path: Path):
    name = path.name
    if name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if name.endswith(".bz2"):
        return bz2.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def is_wbm_layout(path: Path) -> bool:
    if path.is_file():
        return path.name.endswith(".extxyz.zip")
    if not path.is_dir():
        return False
    found = _find(path, WBM_FILES["wbm_initial_atoms"], _manifest(path).get("layout", {}))
    return found is not None and found.exists()


def _find(root: Path, spec: DataFile, layout: dict) -> Path | None:
    if spec.key in layout:
        return root / layout[spec.key]
    if (root / spec.path).exists():
        return root / spec.path
    for folder in (root, root / spec.path.split("/")[0]):
        for pattern in spec.patterns:
            hits = sorted(folder.glob(pattern))
            if hits:
                return hits[0]
    return None


@dataclass(frozen=True)
class WbmLayout:
    root: Path
    files: dict[str, Path]
    labels: str  # "DFT" for the real data; our generated sets declare "EMT"

    @classmethod
    def find(cls, path: Path) -> WbmLayout:
        """The files of a WBM-layout dataset, given its folder or its initial-atoms zip."""
        path = Path(path)
        root = path.parent if path.is_file() else path
        if path.is_file() and root.name == "wbm" and not _manifest(root):
            root = root.parent  # matbench-discovery's data/wbm/<file>: the layout starts at data/
        manifest = _manifest(root)
        layout = manifest.get("layout", {})
        files: dict[str, Path] = {}
        for spec in WBM_FILES.values():
            found = path if (spec.key == "wbm_initial_atoms" and path.is_file()) else _find(root, spec, layout)
            if found is not None and found.exists():
                files[spec.key] = found
            elif spec.required:
                raise DatasetError(
                    f"{root}: WBM-layout dataset has no {spec.key} file (looked for {spec.path} and "
                    f"{', '.join(spec.patterns)}). Run `mlipzoo data fetch wbm --dir {root}` where the network "
                    "allows, or copy the file there.")
        return cls(root=root, files=files, labels=str(manifest.get("labels", "DFT")))


def iter_zip_atoms(path: Path) -> Iterator[Atoms]:
    """Each extxyz member of a zip, in archive order, one at a time (the last frame of each)."""
    from ase.io import read

    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if not name.endswith(".extxyz"):
                    continue
                text = archive.read(name).decode("utf-8")
                try:
                    atoms = read(io.StringIO(text), format="extxyz", index=-1)
                except Exception as exc:
                    raise DatasetError(f"{path}: member {name} is not valid extxyz ({exc})") from exc
                atoms.info.setdefault(COL_ID, name.removesuffix(".extxyz"))
                yield atoms
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{path}: not a zip archive ({exc})") from exc


def read_zip_member(archive: zipfile.ZipFile, material_id: str) -> Atoms | None:
    from ase.io import read

    try:
        text = archive.read(f"{material_id}.extxyz").decode("utf-8")
    except KeyError:
        return None
    return read(io.StringIO(text), format="extxyz", index=-1)


def _as_bool(value: str) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def read_summary(path: Path) -> dict[str, dict]:
    """material_id -> the columns the metrics need, with a clear error for a missing column."""
    out: dict[str, dict] = {}
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        missing = [c for c in SUMMARY_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: summary lacks column(s) {', '.join(missing)} "
                               f"(a WBM summary has {', '.join(SUMMARY_COLUMNS)})")
        for line, row in enumerate(reader, start=2):
            try:
                out[row[COL_ID]] = {
                    "e_form_dft": float(row[COL_E_FORM]) if row[COL_E_FORM] != "" else float("nan"),
                    "each_true": float(row[COL_EACH]) if row[COL_EACH] != "" else float("nan"),
                    "unique_prototype": _as_bool(row[COL_UNIQUE]),
                    "formula": row.get("formula", ""),
                }
            except ValueError as exc:
                raise DatasetError(f"{path}:{line}: bad number in row {row[COL_ID]!r}: {exc}") from exc
    return out


def read_elemental_refs(path: Path, decimals: int) -> dict[str, float]:
    """Element -> reference energy per atom (eV), rounded as matbench-discovery rounds MP's."""
    from pymatgen.entries.computed_entries import ComputedEntry

    with _open_text(path) as f:
        data = json.load(f)
    try:
        entries = {el: ComputedEntry.from_dict(d) for el, d in data.items()}
    except Exception as exc:
        raise DatasetError(f"{path}: not a map of element -> ComputedEntry dict ({exc})") from exc
    return {el: round(e.energy_per_atom, decimals) for el, e in entries.items()}


def read_cse_parameters(path: Path) -> dict[str, dict]:
    """material_id -> the run parameters of its ComputedStructureEntry (all MP2020 needs besides
    the model's structure and energy). Reads JSON Lines or a pandas-style JSON table."""
    def entry_of(record: dict) -> tuple[str, dict]:
        cse = record.get("computed_structure_entry", record)
        mat_id = record.get(COL_ID) or cse.get("entry_id")
        return mat_id, cse.get("parameters", {})

    out: dict[str, dict] = {}
    with _open_text(path) as f:
        if ".jsonl" in path.name:
            records = (json.loads(line) for line in f if line.strip())
        else:
            data = json.load(f)
            if isinstance(data, dict) and COL_ID in data:  # pandas to_json(orient="columns")
                ids, cses = data[COL_ID], data["computed_structure_entry"]
                records = ({COL_ID: ids[k], "computed_structure_entry": cses[k]} for k in ids)
            else:
                records = iter(data if isinstance(data, list) else data.values())
        for record in records:
            mat_id, params = entry_of(record)
            out[mat_id] = params
    return out


def iter_wbm(path: Path) -> Iterator[Atoms]:
    """Initial structures joined with their summary row, reference structure and references."""
    layout = WbmLayout.find(path)
    summary = read_summary(layout.files["wbm_summary"])
    from mlip_zoo.evaluators.discovery.energy import REF_DECIMALS

    refs = read_elemental_refs(layout.files["mp_elemental_ref_entries"], REF_DECIMALS)
    cse = (read_cse_parameters(layout.files["wbm_computed_structure_entries"])
           if "wbm_computed_structure_entries" in layout.files else None)
    relaxed_zip = (zipfile.ZipFile(layout.files["wbm_relaxed_atoms"])
                   if "wbm_relaxed_atoms" in layout.files else None)
    try:
        for atoms in iter_zip_atoms(layout.files["wbm_initial_atoms"]):
            mat_id = str(atoms.info[COL_ID])
            if mat_id not in summary:
                raise DatasetError(f"{layout.files['wbm_summary']}: no row for {mat_id!r}, which "
                                   f"{layout.files['wbm_initial_atoms'].name} contains")
            atoms.info["wbm"] = summary[mat_id]
            missing = sorted({s for s in atoms.get_chemical_symbols()} - set(refs))
            if missing:
                raise DatasetError(f"{layout.files['mp_elemental_ref_entries']}: no reference energy for "
                                   f"{', '.join(missing)} (needed by {mat_id})")
            atoms.info["e_refs"] = {s: refs[s] for s in sorted(set(atoms.get_chemical_symbols()))}
            atoms.info["labels"] = layout.labels
            if cse is not None and mat_id in cse:
                atoms.info["cse_parameters"] = cse[mat_id]
            if relaxed_zip is not None:
                ref = read_zip_member(relaxed_zip, mat_id)
                if ref is not None:
                    atoms.info["dft_relaxed"] = ref
            yield atoms
    finally:
        if relaxed_zip is not None:
            relaxed_zip.close()


def wbm_sha256(path: Path) -> str:
    """What a result on a WBM layout depends on: every file of it, keyed by its role."""
    h = hashlib.sha256()
    for key, file in sorted(WbmLayout.find(path).files.items()):
        h.update(f"{key}:{sha256_file(file)}\n".encode())
    return h.hexdigest()


# Declared by the discovery tasks (Evaluator.formats): the initial-atoms zip joined with its
# summary and references.
WBM_FORMAT = DatasetFormat(name="wbm", description="a Matbench Discovery WBM layout (folder or *.extxyz.zip)",
                           matches=is_wbm_layout, read=iter_wbm, sha256=wbm_sha256,
                           folder="a Matbench Discovery WBM layout")


def fetch(dest: Path, keys: list[str] | None = None, *, mirror: str | None = None, timeout: float = 30.0,
          on_progress=None) -> dict[str, dict]:
    """Download the WBM/MP files into ``dest`` (matbench-discovery's layout), md5-checked.

    ``mirror`` is a base URL holding the same relative paths (an institutional copy); by default
    each file comes from its figshare URL. Files already present with the right md5 are kept; a
    download cut short resumes on the next call. A network failure raises a DatasetError that
    says so and names the URL, so the user can fetch the file elsewhere and copy it in."""
    from mlip_zoo.errors import DownloadChecksumError, DownloadError
    from mlip_zoo.zoo.download import digests, download

    report: dict[str, dict] = {}
    for key in keys or [k for k in WBM_FILES if k != "mp_computed_structure_entries"]:
        if key not in WBM_FILES:
            raise DatasetError(f"unknown WBM file {key!r}; known: {', '.join(WBM_FILES)}")
        spec = WBM_FILES[key]
        target = dest / spec.path
        if target.exists() and digests(target)["md5"] == spec.md5:
            report[key] = {"path": str(target), "status": "present", "md5": spec.md5}
            continue
        url = f"{mirror.rstrip('/')}/{spec.path}" if mirror else spec.url
        try:
            got = download(url, target, md5=spec.md5, timeout=timeout,
                           on_progress=(lambda done, total, key=key: on_progress(key, done, total)) if on_progress else None)
        except DownloadChecksumError as exc:
            raise DatasetError(str(exc)) from None
        except DownloadError as exc:
            raise DatasetError(
                f"{exc}. Where this machine cannot reach it, download it where the network allows and copy it to "
                f"{target} (md5 {spec.md5}), or point the task at files you have with --dataset DIR.") from None
        report[key] = {"path": str(target), "status": got["status"], "md5": got["md5"], "sha256": got["sha256"]}
    return report
