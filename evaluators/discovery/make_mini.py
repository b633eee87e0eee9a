"""Generate discovery-mini (EMT labels), a small set in Matbench Discovery's WBM file layout.

This is **not WBM**. It has WBM's files, columns and conventions, so the discovery and geo-opt
tasks run end to end anywhere in seconds, but every energy comes from ASE's EMT. Numbers on it say
whether a pipeline works, not how well a model discovers materials.

How it mirrors WBM:

- an "MP" reference set: every EMT metal (Al Cu Ag Au Ni Pd Pt) as fcc, bcc and hcp, plus B2 and
  L1_2 compounds of some pairs, written as MP's computed-structure entries; its convex hull
  (pymatgen ``PhaseDiagram``) is the "MP hull" and its lowest-energy elemental entries are the
  elemental references. (No pickled ``PatchedPhaseDiagram``: its patches depend on set order, so its
  bytes and its off-patch hull distances would not reproduce; the plain hull of 43 entries is exact.)
- "WBM" candidates by element substitution into common prototypes (B2, L1_0, B1, L1_2, D0_19 for
  binaries; L2_1 Heusler for ternaries), from ideal prototypes at a Vegard lattice constant, then
  strained and rattled (seeded), a few compositions twice from different perturbations, as WBM
  reaches some prototypes by more than one substitution path;
- the reference relaxation is the discovery task's own protocol (FIRE + FrechetCellFilter,
  fmax 0.05, 500 steps) with EMT, on the structures as read back from the written zip; a material
  is kept only where that relaxation does not depend on the floating-point path (issue #16; the
  criteria of ``oc20.make_mini.path_check``: converged within 80% of the step budget, no near miss
  of the stopping rule, and ``N_JITTER`` start moved by 1e-6 Å ending in the same number of steps
  within 1e-4 eV and 1e-3 Å), so EMT reproduces the labels on any machine within the task configs'
  ``label_tolerance``, not bitwise. (Relaxing on to a tight minimum instead does not work with
  EMT: the protocol's end points lie up to 0.06 eV/atom and 3 Å of cell from the minima a tight
  relaxation reaches, e.g. B2 cells stopped on their tetragonal saddle.) A material whose hull
  distance lies within ``HULL_MARGIN`` eV/atom of the stability threshold 0 is dropped as well: a
  deviation within the tolerance could flip its class, and the stability metrics (F1, precision,
  recall, accuracy) are then exactly those of the labels on any machine. Dropped materials keep
  their numbers (ids have gaps) and are listed, with the reason, in the manifest;
- the summary holds WBM's columns; formation energies use the elemental references rounded to 4
  decimals as matbench-discovery does; EMT energies get no MP2020 correction (it is fitted to
  PBE/PBE+U), so the corrected and uncorrected columns are equal and the manifest says ``labels: EMT``;
- ``wyckoff_spglib`` is a protostructure label of the relaxed structure: anonymous formula,
  space group and Wyckoff letters (moyopy, symprec 0.1) and the chemical system in Wyckoff order;
  ``unique_prototype`` is true for the lowest-energy structure of each label that MP lacks.

Run ``python -m mlip_zoo.evaluators.discovery.make_mini [--out DIR] [--seed N] [--limit N]``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.resources
import io
import itertools
import json
import time
import zipfile
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import write
from mlip_zoo.evaluators.base import load_task_config
from mlip_zoo.evaluators.discovery.energy import REF_DECIMALS, e_form_per_atom
from mlip_zoo.evaluators.discovery.wbm import iter_zip_atoms
from mlip_zoo.evaluators.oc20.make_mini import fmax_trace, path_check
from mlip_zoo.evaluators.relax import RelaxProtocol, relax
from mlip_zoo.zoo import load_potential
from mlip_zoo.zoo.weights import sha256_of

LABEL = "discovery-mini (EMT labels)"
PROTOCOL = RelaxProtocol.model_validate(load_task_config("discovery").options["relax"])
METALS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
# EMT's fcc lattice constants (Å) for the Vegard estimate of a substituted cell's size.
FCC_A = {"Al": 4.05, "Cu": 3.61, "Ag": 4.09, "Au": 4.08, "Ni": 3.52, "Pd": 3.89, "Pt": 3.92}
STRAIN, RATTLE = 0.03, 0.04  # initial-structure perturbation: max |strain|, rattle stdev (Å)
LABEL_SYMPREC = 0.1
# Path-sensitivity checks: one jittered start per material (oc20-mini, with longer paths, uses two).
N_JITTER = 1
# Materials this close to the stability threshold (eV/atom) are dropped: their class could flip.
HULL_MARGIN = 1e-3
LAYOUT = {
    "wbm_initial_atoms": "wbm-initial-atoms.extxyz.zip",
    "wbm_relaxed_atoms": "wbm-relaxed-atoms.extxyz.zip",
    "wbm_summary": "wbm-summary.csv.gz",
    "mp_elemental_ref_entries": "mp-elemental-reference-entries.json.gz",
    "mp_computed_structure_entries": "mp-computed-structure-entries.json.gz",
}
SUMMARY_HEADER = ("material_id", "formula", "n_sites", "volume", "uncorrected_energy",
                  "wyckoff_spglib_initial_structure", "e_correction_per_atom_mp2020",
                  "e_form_per_atom_uncorrected", "e_form_per_atom_mp2020_corrected",
                  "e_above_hull_mp2020_corrected_ppd_mp", "wyckoff_spglib", "unique_prototype")


def _nn_scale(symbols: list[str]) -> float:
    """Vegard: the mean fcc lattice constant of the atoms, for cells built at a = 1 (fcc units)."""
    return float(np.mean([FCC_A[s] for s in symbols]))


def prototype(name: str, elements: tuple[str, ...]) -> Atoms:
    """An ideal prototype cell with the given elements on its sublattices (A, B, C order)."""
    # Shapes only: every cell is rescaled below to the Vegard volume per atom.
    fcc_prim = [[0, .5, .5], [.5, 0, .5], [.5, .5, 0]]
    hexagonal = np.array([[1, 0, 0], [-.5, np.sqrt(3) / 2, 0], [0, 0, np.sqrt(8 / 3)]])
    if name == "fcc":
        atoms = Atoms(elements[0], cell=fcc_prim, pbc=True)
    elif name == "bcc":
        atoms = Atoms(elements[0], cell=[[-.5, .5, .5], [.5, -.5, .5], [.5, .5, -.5]], pbc=True)
    elif name == "hcp":
        atoms = Atoms(2 * elements[0], scaled_positions=[[1 / 3, 2 / 3, .25], [2 / 3, 1 / 3, .75]],
                      cell=hexagonal, pbc=True)
    elif name == "B2":  # CsCl
        atoms = Atoms(elements[:2], scaled_positions=[[0, 0, 0], [.5, .5, .5]], cell=np.eye(3), pbc=True)
    elif name == "B1":  # rocksalt
        atoms = Atoms(elements[:2], scaled_positions=[[0, 0, 0], [.5, .5, .5]], cell=fcc_prim, pbc=True)
    elif name == "L1_2":  # Cu3Au: A3B
        atoms = Atoms([elements[0]] * 3 + [elements[1]],
                      scaled_positions=[[0, .5, .5], [.5, 0, .5], [.5, .5, 0], [0, 0, 0]], cell=np.eye(3), pbc=True)
    elif name == "L1_0":  # CuAu: AB layers on a tetragonal cell
        atoms = Atoms(elements[:2], scaled_positions=[[0, 0, 0], [.5, .5, .5]],
                      cell=[1 / np.sqrt(2), 1 / np.sqrt(2), 1], pbc=True)
    elif name == "D0_19":  # Ni3Sn, P6_3/mmc: A on 6h (x = 5/6), B on 2c
        a_sites = [[5 / 6, 2 / 3, .25], [1 / 3, 1 / 6, .25], [5 / 6, 1 / 6, .25],
                   [1 / 6, 1 / 3, .75], [2 / 3, 5 / 6, .75], [1 / 6, 5 / 6, .75]]
        b_sites = [[1 / 3, 2 / 3, .25], [2 / 3, 1 / 3, .75]]
        atoms = Atoms([elements[0]] * 6 + [elements[1]] * 2, scaled_positions=a_sites + b_sites,
                      cell=hexagonal * [[2], [2], [1]], pbc=True)
    elif name == "L2_1":  # Heusler X2YZ on the fcc primitive cell
        x, y, z = elements
        atoms = Atoms([z, y, x, x], scaled_positions=[[0, 0, 0], [.5, .5, .5], [.25, .25, .25], [.75, .75, .75]],
                      cell=fcc_prim, pbc=True)
    else:
        raise ValueError(f"unknown prototype {name!r}")
    # Scale to the Vegard fcc volume per atom: (a_V^3 / 4) per atom.
    a_v = _nn_scale(atoms.get_chemical_symbols())
    scale = ((a_v ** 3 / 4) * len(atoms) / atoms.get_volume()) ** (1 / 3)
    atoms.set_cell(atoms.cell * scale, scale_atoms=True)
    return atoms


def perturb(atoms: Atoms, rng: np.random.Generator) -> Atoms:
    atoms = atoms.copy()
    strain = np.eye(3) + rng.uniform(-STRAIN, STRAIN, (3, 3)) * np.array([[1, .5, .5], [.5, 1, .5], [.5, .5, 1]])
    atoms.set_cell(atoms.cell @ ((strain + strain.T) / 2), scale_atoms=True)
    atoms.positions += rng.normal(0, RATTLE, atoms.positions.shape)
    atoms.wrap()
    return atoms


def protostructure_label(atoms: Atoms) -> str:
    """Anonymous formula, space group and Wyckoff letters per element, and the chemical system in
    that element order (so Cu3Au and CuAu3 differ)."""
    import moyopy
    from moyopy.interface import MoyoAdapter

    data = moyopy.MoyoDataset(MoyoAdapter.from_atoms(atoms), symprec=LABEL_SYMPREC)
    symbols = atoms.get_chemical_symbols()
    counts = {s: symbols.count(s) for s in sorted(set(symbols))}
    gcd = np.gcd.reduce(list(counts.values()))
    order = sorted(counts, key=lambda s: (counts[s], s))
    anon = "".join(f"{chr(65 + i)}{counts[s] // gcd if counts[s] // gcd > 1 else ''}" for i, s in enumerate(order))
    letters = ["".join(sorted({w for w, sym in zip(data.wyckoffs, symbols) if sym == s})) for s in order]
    return f"{anon}_{data.number}_{'_'.join(letters)}:{'-'.join(order)}"


def candidates(rng: np.random.Generator) -> tuple[list[tuple[str, Atoms]], list[tuple[str, Atoms]]]:
    """(name, initial structure) pairs for the MP reference set and for the WBM-like test set."""
    mp, wbm = [], []
    pairs = list(itertools.combinations(METALS, 2))
    for el in METALS:
        for proto in ("fcc", "bcc", "hcp"):
            mp.append((f"{el}-{proto}", perturb(prototype(proto, (el,)), rng)))
    for i, (a, b) in enumerate(pairs):
        if i % 2 == 0:  # MP knows some compounds; WBM then re-finds their prototypes (not unique)
            mp.append((f"{a}{b}-B2", perturb(prototype("B2", (a, b)), rng)))
            mp.append((f"{a}3{b}-L1_2", perturb(prototype("L1_2", (a, b)), rng)))
        for proto in ("B2", "L1_0", "B1"):
            wbm.append((f"{a}{b}-{proto}", perturb(prototype(proto, (a, b)), rng)))
        for x, y in ((a, b), (b, a)):
            for proto in ("L1_2", "D0_19"):
                wbm.append((f"{x}3{y}-{proto}", perturb(prototype(proto, (x, y)), rng)))
        if i % 3 == 0:  # a second substitution path to the same prototype: only one stays unique
            wbm.append((f"{a}{b}-L1_0-alt", perturb(prototype("L1_0", (a, b)), rng)))
    for a, b, c in itertools.combinations(METALS, 3):
        for x, y, z in ((a, b, c), (b, c, a), (c, a, b)):
            wbm.append((f"{x}2{y}{z}-L2_1", perturb(prototype("L2_1", (x, y, z)), rng)))
    return mp, wbm


def _zip_bytes(members: list[tuple[str, Atoms]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for mat_id, atoms in members:
            text = io.StringIO()
            write(text, atoms, format="extxyz")
            info = zipfile.ZipInfo(f"{mat_id}.extxyz", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, text.getvalue())
    return buffer.getvalue()


def _gzip_bytes(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as f:  # mtime 0: reproducible bytes
        f.write(data)
    return buffer.getvalue()


def _clean(atoms: Atoms, mat_id: str) -> Atoms:
    out = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)
    out.info["material_id"] = mat_id
    return out


def generate(out: Path, seed: int = 0, limit: int | None = None) -> dict:
    """Write the set to ``out``; ``limit`` keeps the first WBM-like candidates (a quick check that
    generation reproduces; the MP-like reference set stays whole)."""
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition
    from pymatgen.entries.computed_entries import ComputedStructureEntry
    from pymatgen.io.ase import AseAtomsAdaptor

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    emt = load_potential("emt")
    mp_candidates, wbm_candidates = candidates(rng)
    wbm_candidates = wbm_candidates[:limit]

    # MP-like reference set: relaxed with the same protocol; its hull and elemental references.
    mp_entries, mp_labels = [], set()
    for name, atoms in mp_candidates:
        result = relax(atoms, emt, PROTOCOL)
        mp_entries.append(ComputedStructureEntry(AseAtomsAdaptor.get_structure(result.atoms), result.energy,
                                                 entry_id=f"mp-{name}"))
        mp_labels.add(protostructure_label(result.atoms))
    refs = {}
    for entry in mp_entries:
        if entry.composition.is_element:
            el = str(entry.composition.elements[0])
            if el not in refs or entry.energy_per_atom < refs[el].energy_per_atom:
                refs[el] = entry
    ref_energies = {el: round(e.energy_per_atom, REF_DECIMALS) for el, e in refs.items()}
    hull = PhaseDiagram([PDEntry(e.composition, e.energy) for e in mp_entries])

    # WBM-like candidates, written first and read back, so the labels are for the bytes on disk.
    ids = [f"dmini-{i + 1:04d}" for i in range(len(wbm_candidates))]
    cleaned = {mat_id: _clean(atoms, mat_id) for mat_id, (_, atoms) in zip(ids, wbm_candidates)}
    out.mkdir(parents=True, exist_ok=True)
    (out / LAYOUT["wbm_initial_atoms"]).write_bytes(_zip_bytes(list(cleaned.items())))
    rows, relaxed, dropped, reasons = [], [], [], {}
    for index, atoms in enumerate(iter_zip_atoms(out / LAYOUT["wbm_initial_atoms"])):
        mat_id = atoms.info["material_id"]
        name = f"{mat_id} {wbm_candidates[index][0]}"
        hook, trace = fmax_trace(PROTOCOL)
        try:
            result = relax(atoms, emt, PROTOCOL, on_step=hook)
            why = path_check(atoms, result, trace, emt, PROTOCOL, np.random.default_rng([seed, 3, index]),
                             n_jitter=N_JITTER)
        except Exception as exc:  # noqa: BLE001 -- an exploded relaxation is dropped, never written
            why = ("exploded", f"{type(exc).__name__}: {exc}")
        final = result.atoms if why is None else None
        if why is None:
            each = hull.get_decomp_and_e_above_hull(
                PDEntry(Composition(final.get_chemical_formula()), result.energy), allow_negative=True)[1]
            if abs(each) < HULL_MARGIN:
                why = ("near_hull", f"hull distance {each:.2g} eV/atom, within {HULL_MARGIN:g} of the threshold 0")
        if why is not None:
            dropped.append(f"{name}: {why[1]}")
            reasons[why[0]] = reasons.get(why[0], 0) + 1
            continue
        symbols = final.get_chemical_symbols()
        e_form = e_form_per_atom(result.energy, symbols, ref_energies)
        rows.append({"material_id": mat_id, "formula": final.get_chemical_formula(mode="metal"),
                     "n_sites": len(final), "volume": final.get_volume(), "uncorrected_energy": result.energy,
                     "wyckoff_spglib_initial_structure": protostructure_label(atoms),
                     "e_correction_per_atom_mp2020": 0.0, "e_form_per_atom_uncorrected": e_form,
                     "e_form_per_atom_mp2020_corrected": e_form, "e_above_hull_mp2020_corrected_ppd_mp": each,
                     "wyckoff_spglib": protostructure_label(final), "converged": result.converged})
        relaxed.append((mat_id, _clean(final, mat_id)))
    # The initial structures of the kept materials only: the same members, byte for byte.
    (out / LAYOUT["wbm_initial_atoms"]).write_bytes(_zip_bytes([(r["material_id"], cleaned[r["material_id"]])
                                                                for r in rows]))

    # unique_prototype: the lowest-energy structure of each label that MP does not have.
    best: dict[str, dict] = {}
    for row in rows:
        label = row["wyckoff_spglib"]
        if label not in mp_labels and (label not in best or row["e_form_per_atom_mp2020_corrected"]
                                       < best[label]["e_form_per_atom_mp2020_corrected"]):
            best[label] = row
    for row in rows:
        row["unique_prototype"] = best.get(row["wyckoff_spglib"]) is row

    (out / LAYOUT["wbm_relaxed_atoms"]).write_bytes(_zip_bytes(relaxed))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(SUMMARY_HEADER)
    for row in rows:
        writer.writerow([repr(float(row[c])) if isinstance(row[c], (float, np.floating)) else row[c]
                         for c in SUMMARY_HEADER])
    (out / LAYOUT["wbm_summary"]).write_bytes(_gzip_bytes(text.getvalue().encode()))
    ref_json = json.dumps({el: e.as_dict() for el, e in sorted(refs.items())}, sort_keys=True)
    (out / LAYOUT["mp_elemental_ref_entries"]).write_bytes(_gzip_bytes(ref_json.encode()))
    entries_json = json.dumps([e.as_dict() for e in mp_entries], sort_keys=True)
    (out / LAYOUT["mp_computed_structure_entries"]).write_bytes(_gzip_bytes(entries_json.encode()))

    each = np.array([r["e_above_hull_mp2020_corrected_ppd_mp"] for r in rows])
    manifest = {
        "name": "discovery-mini", "label": LABEL, "labels": "EMT", "generator": "mlip_zoo.evaluators.discovery.make_mini", "labelled_by": "emt",
        "seed": seed, "layout": LAYOUT,
        "description": (f"{LABEL}, generated in Matbench Discovery's WBM file layout: not WBM. Alloys of the EMT "
                        "metals by substitution into B2, L1_0, B1, L1_2, D0_19 and L2_1 prototypes, perturbed, "
                        "relaxed and labelled with ASE's EMT; hull from an MP-like EMT reference set."),
        "energy": "total EMT energies, eV; no MP2020 corrections (EMT is not PBE)",
        "relax_protocol": PROTOCOL.model_dump(mode="json"),
        "counts": {"materials": len(rows), "mp_reference_entries": len(mp_entries),
                   "stable": int((each <= 0).sum()), "unique_prototypes": int(sum(r["unique_prototype"] for r in rows)),
                   "reference_relaxations_converged": int(sum(r["converged"] for r in rows)),
                   "dropped": len(dropped)},
        "dropped_by_reason": dict(sorted(reasons.items())), "dropped_materials": dropped,
        "drop_criteria": {"path": "mlip_zoo.evaluators.oc20.make_mini.path_check", "jittered_starts": N_JITTER},
        "hull_margin_eV_per_atom": HULL_MARGIN,
        **({"limit": limit} if limit is not None else {}),
        "files": {name: {"sha256": sha256_of(out / name),
                         **({"n": len(rows)} if name.endswith(".zip") else {})}
                  for name in LAYOUT.values()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return {"manifest": manifest, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> None:
    default = Path(str(importlib.resources.files("mlip_zoo.configs") / "datasets" / "discovery-mini"))
    parser = argparse.ArgumentParser(description=f"Generate {LABEL}, in WBM's file layout (not WBM).")
    parser.add_argument("--out", type=Path, default=default, help=f"output folder (default: {default})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="only the first N candidates")
    args = parser.parse_args(argv)
    result = generate(args.out, args.seed, args.limit)
    m = result["manifest"]
    print(f"{LABEL}: {m['counts']} in {result['seconds']:.0f} s -> {args.out}")
    print(f"  dropped {m['counts']['dropped']}: {m['dropped_by_reason']}")
    for line in m["dropped_materials"]:
        print(f"    dropped {line}")
    for name, entry in m["files"].items():
        print(f"  {name}: {(args.out / name).stat().st_size / 1024:.0f} KiB, sha256 {entry['sha256']}")


if __name__ == "__main__":
    main()
