"""Generate oc20-mini (EMT labels), a small set generated in OC20's format.

This is **not OC20**. It reuses OC20's conventions so the OC20 tasks (S2EF, IS2RE, IS2RS) can
run end to end on any machine in seconds, but every label comes from ASE's EMT, a toy potential
whose H/C/N/O parameters are rough. Numbers on it say whether a pipeline works, not how good a
model is for catalysis.

What is OC20-like: adsorbates come from fairchem-data-oc's OC20 adsorbate list; slabs carry OC20's
tags (0 fixed subsurface, 1 surface, 2 adsorbate) with the tag-0 atoms held by ``FixAtoms``; the
splits follow OC20's scheme (id, ood_ads, ood_cat, ood_both) by holding out two metals and a third
of the adsorbates; the S2EF frames are in OC20's raw layout, read by the same code as the real
files. What is not: slabs are fcc(111) of the seven EMT metals only.

Energies are total EMT energies, and every structure carries the reference that turns its total
energy into an adsorption energy, built as OC20 builds its own: ``E_ads = E_total - E_slab -
sum of the adsorbate atoms' gas-phase references``, with EMT's clean-slab energy (the slab relaxed
with the task protocol, tag-0 layers fixed) and EMT's gas references from relaxed H2, H2O, CO and
N2 (H = H2/2, O = H2O - H2, C = CO - O, N = N2/2), each rounded to 1e-6 eV.

Files (byte-reproducible for a given seed and library versions):

- ``s2ef/``: OC20's raw S2EF layout, one pair per split (``0`` id, ``1`` ood_ads, ``2`` ood_cat,
  ``3`` ood_both, named in ``s2ef/manifest.json``): ``N.extxyz.xz`` + ``N.txt.xz``, compressed
  as the published tarballs are. The frames are the first, middle and last of every converged
  protocol relaxation (path-sensitive ones included: single points, exact EMT evaluations of the
  stored positions, reproduce anyway), with EMT energy and forces on all atoms (fixed ones
  included); each txt line is ``random<sid>,frame<fid>,<reference energy>`` (fid: the optimizer
  step). Every float is written at full precision (``repr``: positions, cell, energy and forces
  read back bit for bit, where ASE's writer keeps 8 decimals), so the labels are EMT evaluated on
  exactly the positions a reader gets.
- ``is2re.json``: an ASE database (JSON backend: the row model of fairchem v2's ``.aselmdb``,
  floats at full precision): one initial structure per system; key-value pairs ``sid``, ``split``,
  ``y_init``, ``y_relaxed`` (eV, total), ``energy_kind`` (``total``), ``reference_energy`` (eV)
  and ``n_steps`` (the protocol relaxation's steps); tags and the FixAtoms constraint on the row;
  ``data.pos_relaxed`` the EMT-relaxed positions.
- ``manifest.json``: seed, relaxation protocol, references, drop criteria, split sizes, what
  was dropped and why, and each file's sha256.

Relaxed labels that reproduce (issue #16). A relaxation amplifies the last bits of its floating-point
path (AVX-512 vs AVX2 kernels, thread counts), and the protocol (fmax 0.02 eV/Å) stops at the first
step whose forces meet its criterion, so on a chaotic path another machine takes other steps and
stops elsewhere. Relaxing the labels on to a tight minimum does not help with EMT: its adsorbates
sit on soft, flat landscapes, and the protocol's end points lie 0.01-1.5 Å (mean free atom) and up
to 1 eV from the minima a tight relaxation reaches, so every machine would miss such a label by the
protocol's own slack. The labels stay the protocol's end point, and a system is kept only when that
end point does not depend on the path (``path_check``): its relaxation converges within
``MAX_STEP_SHARE`` of the step budget, every step but the last has its largest force above
``fmax * (1 + FMAX_MARGIN)`` and the last below ``fmax * (1 - FMAX_MARGIN)`` (no near-miss of the
stopping rule), and ``N_JITTER`` relaxations from starts moved by ``JITTER`` Å (seeded; ten orders
of magnitude above round-off) take the same number of steps and end within ``JITTER_ENERGY`` eV and
``JITTER_DISTANCE`` Å (largest atom displacement) of it, i.e. amplify a perturbation at most a
thousandfold. Other systems are dropped from is2re.json (their S2EF frames stay), the reason printed
and counted in the manifest. On the kept
systems EMT's relaxations agree with the labels on any machine to far below the task configs'
``label_tolerance`` (EwT and ADwT exactly 1).

Run ``python -m mlip_zoo.evaluators.oc20.make_mini [--out DIR] [--seed N] [--limit N]``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import json
import lzma
import pickle
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.optimize import BFGS

from mlip_zoo.evaluators.base import load_task_config
from mlip_zoo.evaluators.data import free_mask, sha256_file
from mlip_zoo.evaluators.relax import RelaxProtocol, Relaxation, relax
from mlip_zoo.zoo import load_potential
from mlip_zoo.zoo.weights import sha256_of

LABEL = "oc20-mini (EMT labels)"
# The labels come from the protocol the IS2RE/IS2RS tasks run, on systems where it is path-insensitive.
PROTOCOL = RelaxProtocol.model_validate(load_task_config("oc20-is2re").options["relax"])
# Path sensitivity (see path_check): step budget share, stopping-rule margin (relative to fmax),
# jittered starts, and how close their end points must stay (eV, total; Å, largest atom displacement).
MAX_STEP_SHARE, FMAX_MARGIN = 0.8, 1e-3
N_JITTER, JITTER = 2, 1e-6
JITTER_ENERGY, JITTER_DISTANCE = 1e-4, 1e-3
ID_METALS = ("Al", "Cu", "Ag", "Ni", "Pt")
OOD_METALS = ("Au", "Pd")
SITES = ("ontop", "bridge", "fcc", "hcp")
N_ADSORBATES, MAX_ADSORBATE_ATOMS, PER_SPLIT = 12, 5, 40
SPLITS = ("id", "ood_ads", "ood_cat", "ood_both")  # s2ef/<index>.extxyz.xz holds SPLITS[index]
REF_DECIMALS = 6  # references are conventions: rounded, so they read the same on every machine


class _AseNumpyUnpickler(pickle.Unpickler):
    """The adsorbate pickle needs only ase and numpy classes; refuse anything else, since an
    arbitrary global in a pickle can run code."""

    _BUILTINS = {"set", "frozenset", "slice", "complex"}

    def find_class(self, module, name):
        if module.startswith("ase.") or module == "numpy" or module.startswith("numpy."):
            return super().find_class(module, name)
        if module == "builtins" and name in self._BUILTINS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"adsorbates.pkl: refusing to load {module}.{name}")


def load_adsorbates() -> dict[int, tuple[Atoms, str, np.ndarray]]:
    """fairchem-data-oc's OC20 adsorbates: {id: (atoms, smiles, binding_indices)}."""
    path = importlib.resources.files("fairchem.data.oc.databases.pkls") / "adsorbates.pkl"
    with path.open("rb") as f:
        raw = _AseNumpyUnpickler(f).load()
    # Keep only symbols and positions: some entries carry stray info that extxyz would write out.
    return {int(k): (Atoms(v[0].get_chemical_symbols(), v[0].get_positions()), str(v[1]),
                     np.asarray(v[2], dtype=int)) for k, v in raw.items()}


def choose_adsorbates(ads, rng) -> tuple[list[int], list[int]]:
    """A seeded pick of small adsorbates, split into in-distribution and held-out (~1/3)."""
    small = sorted(k for k, v in ads.items() if len(v[0]) <= MAX_ADSORBATE_ATOMS)
    chosen = sorted(int(k) for k in rng.choice(small, size=N_ADSORBATES, replace=False))
    held = sorted(int(k) for k in rng.choice(chosen, size=N_ADSORBATES // 3, replace=False))
    return [k for k in chosen if k not in held], held


def clean_slab(metal: str) -> Atoms:
    """metal(111), tagged and constrained as in OC20: the top layer free (tag 1), the rest fixed (0)."""
    slab = fcc111(metal, size=(2, 2, 3), vacuum=7.0)
    # ase numbers layers 1..3 from the top; OC20 tags the top layer 1 and the rest 0 (fixed).
    slab.set_tags(np.where(slab.get_tags() == 1, 1, 0))
    slab.set_constraint(FixAtoms(mask=slab.get_tags() == 0))
    return slab  # info keeps ase.build's adsorbate_info, which add_adsorbate reads


def slab_energies(metals, potential) -> dict[str, float]:
    """EMT energy of each clean slab relaxed with the task protocol (OC20's E_slab)."""
    out = {}
    for metal in metals:
        result = relax(clean_slab(metal), potential, PROTOCOL)
        if not result.converged:
            raise RuntimeError(f"the clean {metal}(111) slab did not relax in {result.steps} steps")
        out[metal] = round(float(result.energy), REF_DECIMALS)
    return out


def gas_references() -> dict[str, float]:
    """OC20's per-atom gas-phase references, from EMT's relaxed H2, H2O, CO and N2."""
    energy = {}
    for name in ("H2", "H2O", "CO", "N2"):
        gas = molecule(name)
        gas.calc = EMT()
        if not BFGS(gas, logfile=None).run(fmax=1e-4, steps=500):
            raise RuntimeError(f"EMT's {name} did not relax")
        energy[name] = float(gas.get_potential_energy())
    h = energy["H2"] / 2
    o = energy["H2O"] - energy["H2"]
    refs = {"H": h, "O": o, "C": energy["CO"] - o, "N": energy["N2"] / 2}
    return {el: round(value, REF_DECIMALS) for el, value in refs.items()}


def reference_energy(atoms: Atoms, metal: str, slabs: dict[str, float], gas: dict[str, float]) -> float:
    """E_slab + the adsorbate atoms' gas references: total - this = adsorption energy."""
    adsorbate = np.asarray(atoms.get_chemical_symbols())[atoms.get_tags() == 2]
    return round(slabs[metal] + sum(gas[str(el)] for el in adsorbate), REF_DECIMALS)


def build_system(metal: str, ads: tuple[Atoms, str, np.ndarray], rng) -> Atoms:
    """An unrelaxed adsorbate on metal(111), tagged and constrained as in OC20."""
    slab = clean_slab(metal)
    molecule, _, binding = ads
    molecule, b = molecule.copy(), int(binding[0])
    molecule.set_tags(2)
    if len(molecule) > 1:
        # The pickle's orientations are arbitrary: point the molecule away from the surface so
        # the binding atom is the one facing it, then turn it a little about the normal.
        others = np.delete(molecule.positions, b, axis=0).mean(axis=0) - molecule.positions[b]
        if np.linalg.norm(others) > 0.1:
            molecule.rotate(others, (0, 0, 1), center=molecule.positions[b])
        molecule.rotate(rng.uniform(-30.0, 30.0), "z", center=molecule.positions[b])
    add_adsorbate(slab, molecule, height=rng.uniform(1.5, 2.2), position=str(rng.choice(SITES)), mol_index=b)
    # Rattle only the adsorbate so initial structures are off-minimum but slabs stay ideal.
    is_ads = slab.get_tags() == 2
    slab.positions[is_ads] += rng.normal(0.0, 0.05, size=(int(is_ads.sum()), 3))
    slab.set_constraint(FixAtoms(mask=slab.get_tags() == 0))
    slab.info = {}  # drop ase.build's adsorbate_info, which is not a dataset field
    return slab


def plan(ads_id: list[int], ads_ood: list[int], seed: int) -> list[tuple[str, str, int]]:
    """(split, metal, adsorbate) per system: each split cycles through its combinations in a
    seeded order, so every combination appears PER_SPLIT/len(combos) times, give or take one."""
    rng = np.random.default_rng([seed, 1])
    groups = {"id": (ID_METALS, ads_id), "ood_ads": (ID_METALS, ads_ood),
              "ood_cat": (OOD_METALS, ads_id), "ood_both": (OOD_METALS, ads_ood)}
    out = []
    for split, (metals, adsorbates) in groups.items():
        combos = [(m, a) for m in metals for a in adsorbates]
        order = rng.permutation(len(combos))
        out += [(split, *combos[order[i % len(combos)]]) for i in range(PER_SPLIT)]
    return out


def emt_label(atoms: Atoms) -> tuple[float, np.ndarray]:
    """Energy and raw forces (fixed atoms included) from a fresh EMT, so no cached state leaks."""
    a = atoms.copy()
    a.calc = EMT()
    return float(a.get_potential_energy()), a.get_forces(apply_constraint=False).copy()


def ase_json_db(path: Path, images: list[Atoms], arrays: tuple[str, ...] = ()) -> str:
    """Write an ASE database (JSON backend) holding every float at full precision, and return its
    sha256. ASE stamps rows with a time, a user and a random unique id; those are replaced by
    fixed values so the file is byte-reproducible."""
    import ase.db

    path.unlink(missing_ok=True)
    with ase.db.connect(str(path), type="json", append=False) as db:
        for atoms in images:
            info = dict(atoms.info)
            data = {name: atoms.arrays[name] for name in arrays}
            plain = atoms.copy()
            plain.info = {}
            for name in arrays:
                del plain.arrays[name]
            plain.calc = atoms.calc
            db.write(plain, key_value_pairs=info, data=data)
    raw = json.loads(path.read_text())
    for row in raw.values():
        if isinstance(row, dict) and "ctime" in row:
            row["ctime"] = row["mtime"] = 0.0
            row["user"] = "mlip-zoo"
            ident = f"{row['key_value_pairs']['sid']}/{row['key_value_pairs'].get('fid', '')}"
            row["unique_id"] = hashlib.md5(ident.encode()).hexdigest()
    path.write_text(json.dumps(raw, indent=1, sort_keys=True) + "\n")
    return sha256_of(path)


def _floats(values) -> str:
    return " ".join(repr(float(v)) for v in values)  # shortest text that reads back bit for bit


def extxyz_frame(atoms: Atoms) -> str:
    """One frame in OC20's extxyz columns (species, pos, move_mask, tags, forces), energy in the
    comment line, every float at full precision."""
    energy, forces = atoms.calc.results["energy"], atoms.calc.results["forces"]
    free = free_mask(atoms)
    pbc = " ".join("T" if p else "F" for p in atoms.pbc)
    lines = [str(len(atoms)),
             f'Lattice="{_floats(atoms.cell[:].ravel())}" '
             "Properties=species:S:1:pos:R:3:move_mask:L:1:tags:I:1:forces:R:3 "
             f'energy={float(energy)!r} pbc="{pbc}"']
    for sym, pos, move, tag, force in zip(atoms.get_chemical_symbols(), atoms.positions, free, atoms.get_tags(),
                                          forces, strict=True):
        lines.append(f"{sym} {_floats(pos)} {'T' if move else 'F'} {int(tag)} {_floats(force)}")
    return "\n".join(lines) + "\n"


def write_s2ef_raw(folder: Path, frames: list[Atoms]) -> None:
    """OC20's raw layout: per split ``<index>.extxyz.xz`` + ``<index>.txt.xz`` (xz as the published
    tarballs), and a manifest naming each file's split."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    stems = {}
    for index, split in enumerate(SPLITS):
        mine = [a for a in frames if a.info["split"] == split]
        if not mine:
            continue
        xyz = "".join(extxyz_frame(a) for a in mine)
        txt = "".join(f"random{a.info['sid']},frame{a.info['fid']},{a.info['reference_energy']!r}\n" for a in mine)
        for name, text in ((f"{index}.extxyz.xz", xyz), (f"{index}.txt.xz", txt)):
            (folder / name).write_bytes(lzma.compress(text.encode(), preset=9))
        stems[str(index)] = split
    (folder / "manifest.json").write_text(json.dumps({"splits": stems}, indent=2, sort_keys=True) + "\n")


def fmax_trace(protocol: RelaxProtocol) -> tuple[Callable[[Atoms, int], None], list[float]]:
    """An ``on_step`` hook recording, per optimizer step, the largest force the optimizer sees (the
    cell filter's, when the protocol has one: built at step 0 from the same cell as relax's own)."""
    trace: list[float] = []
    target: list = []

    def hook(atoms: Atoms, step: int) -> None:
        if not target:
            if protocol.cell_filter == "frechet":
                from ase.filters import FrechetCellFilter

                target.append(FrechetCellFilter(atoms))
            else:
                target.append(atoms)
        trace.append(float(np.linalg.norm(target[0].get_forces(), axis=1).max()))

    return hook, trace


def _end_distance(a: Atoms, b: Atoms) -> float:
    """Largest atom displacement and cell-vector change (Å) between two relaxed copies of one start."""
    return float(max(np.linalg.norm(a.positions - b.positions, axis=1).max(), np.abs(a.cell[:] - b.cell[:]).max()))


def path_check(initial: Atoms, first: Relaxation, trace: list[float], potential, protocol: RelaxProtocol,
               rng: np.random.Generator, n_jitter: int = N_JITTER) -> tuple[str, str] | None:
    """(kind, reason) when the protocol relaxation ``first`` of ``initial`` (``trace``: its
    fmax_trace) is path-sensitive, None when it is not. Kinds: not_converged, step_budget,
    stopping_margin, jitter."""
    if not first.converged:
        return "not_converged", f"not converged in {first.steps} steps"
    budget = int(MAX_STEP_SHARE * protocol.steps)
    if first.steps > budget:
        return "step_budget", f"{first.steps} steps, over {MAX_STEP_SHARE:.0%} of the {protocol.steps}-step budget"
    before, last = min(trace[:-1], default=np.inf), trace[-1]
    if before <= protocol.fmax * (1 + FMAX_MARGIN) or last >= protocol.fmax * (1 - FMAX_MARGIN):
        return "stopping_margin", (f"the stopping rule is a near miss: largest force {before:.6g} before the last step, "
                                   f"{last:.6g} at it, fmax {protocol.fmax:g} +- {FMAX_MARGIN:.0e}")
    for k in range(n_jitter):
        moved = initial.copy()
        moved.positions += rng.normal(0.0, JITTER, moved.positions.shape)
        try:
            other = relax(moved, potential, protocol)
        except Exception as exc:  # noqa: BLE001 -- it exploded from a start next to a good one
            return "jitter", f"from a start moved by {JITTER:g} A: {type(exc).__name__}: {exc}"
        de, dx = abs(other.energy - first.energy), _end_distance(other.atoms, first.atoms)
        if other.steps != first.steps or not other.converged or de > JITTER_ENERGY or dx > JITTER_DISTANCE:
            return "jitter", (f"from a start moved by {JITTER:g} A (#{k + 1}): {other.steps} steps instead of "
                              f"{first.steps}, end {de:.2g} eV and {dx:.2g} A away (allowed {JITTER_ENERGY:g} eV, "
                              f"{JITTER_DISTANCE:g} A)")
    return None


def generate(out: Path, seed: int = 0, limit: int | None = None) -> dict:
    """Write the set to ``out``; ``limit`` keeps the first systems of the plan (a quick check that
    generation reproduces)."""
    t0 = time.perf_counter()
    adsorbates = load_adsorbates()
    ads_id, ads_ood = choose_adsorbates(adsorbates, np.random.default_rng([seed, 0]))
    emt = load_potential("emt")
    gas = gas_references()
    slabs = slab_energies((*ID_METALS, *OOD_METALS), emt)
    is2re, s2ef, splits, dropped, reasons = [], [], {}, [], {}
    for i, (split, metal, ads_key) in enumerate(plan(ads_id, ads_ood, seed)[:limit]):
        sid = i  # an integer, as OC20's (random<sid>); numbered before relaxing, so a dropped system leaves a gap
        initial = build_system(metal, adsorbates[ads_key], np.random.default_rng([seed, 2, i]))
        reference = reference_energy(initial, metal, slabs, gas)
        frames: dict[int, np.ndarray] = {}
        name = f"system {sid:04d} {metal}/{adsorbates[ads_key][1]}"
        hook, trace = fmax_trace(PROTOCOL)

        def on_step(a: Atoms, step: int) -> None:
            frames[step] = a.get_positions()
            hook(a, step)

        try:
            r = relax(initial, emt, PROTOCOL, on_step=on_step)
        except Exception as exc:  # an exploded relaxation is dropped, never written
            dropped.append(f"{name}: {type(exc).__name__}: {exc}")
            reasons["exploded"] = reasons.get("exploded", 0) + 1
            continue
        if r.converged:  # single points, exact EMT evaluations: every converged relaxation gives frames
            for step in sorted({0, r.steps // 2, r.steps}):
                snap = initial.copy()
                snap.positions = frames[step]
                energy, forces = emt_label(snap)
                snap.info = {"sid": sid, "fid": int(step), "split": split, "reference_energy": reference}
                snap.calc = SinglePointCalculator(snap, energy=energy, forces=forces)
                s2ef.append(snap)
        why = path_check(initial, r, trace, emt, PROTOCOL, np.random.default_rng([seed, 3, i]))
        if why is not None:  # no relaxed labels from a path-sensitive relaxation
            dropped.append(f"{name}: {why[1]}")
            reasons[why[0]] = reasons.get(why[0], 0) + 1
            continue
        y_init, _ = emt_label(initial)
        frame = initial.copy()
        frame.info = {"sid": sid, "split": split, "y_init": y_init, "y_relaxed": float(r.energy),
                      "energy_kind": "total", "reference_energy": reference, "n_steps": int(r.steps)}
        frame.new_array("pos_relaxed", r.atoms.get_positions())
        is2re.append(frame)
        splits[split] = splits.get(split, 0) + 1

    out.mkdir(parents=True, exist_ok=True)
    write_s2ef_raw(out / "s2ef", s2ef)
    files = {"is2re.json": {"sha256": ase_json_db(out / "is2re.json", is2re, ("pos_relaxed",)), "n": len(is2re)},
             "s2ef": {"sha256": sha256_file(out / "s2ef"), "n": len(s2ef)}}
    manifest = {
        "name": "oc20-mini", "label": LABEL,
        "description": (f"{LABEL}, generated in OC20's format: not OC20. Small fairchem-data-oc adsorbates on "
                        "fcc(111) slabs of the EMT metals, relaxed and labelled with ASE's EMT. Held out: "
                        f"metals {list(OOD_METALS)} and adsorbates "
                        f"{[adsorbates[k][1] for k in ads_ood]}; in distribution: {[adsorbates[k][1] for k in ads_id]}."),
        "generator": "mlip_zoo.evaluators.oc20.make_mini", "labelled_by": "emt", "seed": seed,
        "relax_protocol": PROTOCOL.model_dump(),
        "labels": ("y_relaxed and pos_relaxed: the protocol's end point, kept only where it does not depend on "
                   "the floating-point path (drop_criteria): EMT reproduces them on any machine within the task "
                   "configs' label_tolerance"),
        "drop_criteria": {"max_step_share": MAX_STEP_SHARE, "fmax_margin_relative": FMAX_MARGIN,
                          "jittered_starts": N_JITTER, "jitter_A": JITTER, "jitter_energy_eV": JITTER_ENERGY,
                          "jitter_distance_A": JITTER_DISTANCE},
        "files": files, "splits": splits, "dropped": len(dropped),
        "dropped_by_reason": dict(sorted(reasons.items())), "dropped_systems": dropped,
        "energy_kind": "total",
        "energy": ("total EMT energies, eV; each structure's reference_energy (eV) turns them into adsorption "
                   "energies: E_ads = E_total - reference_energy"),
        "reference_energy": {"scheme": "OC20's: E_slab (clean slab relaxed with the task protocol) + the adsorbate "
                                       "atoms' gas references (H = H2/2, O = H2O - H2, C = CO - O, N = N2/2; "
                                       "molecules relaxed with BFGS to fmax 1e-4 eV/A)",
                             "labelled_by": "emt", "slab_energies": slabs, "gas_references": gas},
        **({"limit": limit} if limit is not None else {}),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return {"manifest": manifest, "dropped": dropped, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> None:
    default_out = Path(str(importlib.resources.files("mlip_zoo.configs"))) / "datasets" / "oc20-mini"
    parser = argparse.ArgumentParser(description=f"Generate {LABEL}, in OC20's format (not OC20).")
    parser.add_argument("--out", type=Path, default=default_out, help=f"output folder (default {default_out})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="only the first N systems of the plan")
    args = parser.parse_args(argv)
    result = generate(args.out, args.seed, args.limit)
    m = result["manifest"]
    print(f"{LABEL} -> {args.out}  ({result['seconds']:.1f} s)")
    print("  splits: " + ", ".join(f"{k}={v}" for k, v in m["splits"].items()) + f"; dropped: {m['dropped']} "
          f"{m['dropped_by_reason']}")
    for line in result["dropped"]:
        print(f"    dropped {line}")
    for name, entry in m["files"].items():
        size = sum(p.stat().st_size for p in [args.out / name, *(args.out / name).glob("*")] if p.is_file())
        print(f"  {name}: {entry['n']} frames, {size / 1024:.0f} KiB, sha256 {entry['sha256']}")


if __name__ == "__main__":
    main()
