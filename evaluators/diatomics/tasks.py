"""The ``diatomics`` task: every homonuclear dimer X2 at the separations of a DFT reference curve
(matbench-discovery's VASP PBE/r2SCAN curves), scored on the smoothness of the model's own curve
and on its errors against the reference.

Each row holds one dimer: the model's energies and forces at the evaluated points and the
reference curve of the chosen functional, so every metric is recomputed from the predictions
file alone. Per-element metrics go under ``metrics["elements"][X]``; the top-level value of each
is its mean over the elements where it is defined, as matbench-discovery reports them.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from ase import Atoms
from pydantic import BaseModel, ConfigDict, Field

from mlip_zoo.evaluators.base import REDUCED, Evaluator, Terms
from mlip_zoo.evaluators.data import record_id
from mlip_zoo.evaluators.diatomics import metrics as m
from mlip_zoo.evaluators.diatomics.data import DIATOMICS_FORMAT
from mlip_zoo.zoo.potential import Potential

SMOOTHNESS = ("tortuosity", "energy_diff_flips", "energy_jump", "force_flips", "force_jump",
              "force_total_variation")
VS_REFERENCE = ("energy_mae", "force_mae", "bond_length_error", "well_depth_error", "vib_freq_error",
                "wall_dist_mae")
PER_ELEMENT = (*VS_REFERENCE, *SMOOTHNESS)
ROW_METRICS = (*SMOOTHNESS, *VS_REFERENCE)  # element_metrics' keys, in its order
_VEC = pa.list_(pa.float64())


class Window(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    covalent: float = Field(0.9, gt=0)  # scored from this many covalent radii...
    vdw: float = Field(3.1, gt=0)  # ...up to this many van der Waals radii (or the last point)
    wall_covalent: float = Field(0.8, gt=0)  # the wall metric starts here (the reference's first point)
    min_points: int = Field(5, ge=3)  # fewer model points in the window: the element is not scored


class ReferenceQuality(BaseModel):
    """A reference curve at least this jumpy in the window is not compared against (its own
    SCF branch changes would drown any model error); smoothness metrics are still reported."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min_energy_jump: float = Field(1.5, gt=0)
    min_energy_flips: int = Field(3, ge=1)


class Protocol(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    functional: Literal["PBE", "r2SCAN"] = "PBE"
    every: int = Field(1, ge=1, le=8)  # every k-th reference point (and always the last)
    box: float = Field(50.0, gt=12.0)  # cubic periodic cell edge, Å: images far beyond any cutoff
    skip_elements: list[str] = []
    window: Window = Window()
    grid_points: int = Field(200, ge=10)  # uniform grid of the energy and force MAE
    energy_flat: float = Field(1e-3, ge=0)  # eV: smaller energy steps have no direction
    force_flat: float = Field(1e-2, ge=0)  # eV/Å: smaller forces count as zero for force flips
    wall_heights: list[float] = [1, 5, 10, 20, 50, 100]  # eV above the minimum
    min_well_depth: float = Field(0.05, ge=0)  # eV: shallower reference wells have no bond length
    reference_quality: ReferenceQuality = ReferenceQuality()


class Diatomics(Evaluator):
    # the prediction columns that come from the dataset, not the model (``id`` is always one)
    reference_columns = ("element", "functional", "ref_distances", "ref_energies", "ref_forces")
    schema = pa.schema([
        pa.field("id", pa.string()), pa.field("element", pa.string()), pa.field("functional", pa.string()),
        pa.field("status", pa.string()), pa.field("reason", pa.string()), pa.field("skipped", pa.string()),
        pa.field("seconds", pa.float64()),
        pa.field("point_index", pa.list_(pa.int32())),  # evaluated points, indices into ref_distances
        pa.field("energies", _VEC), pa.field("forces", _VEC),  # model; forces flattened (point, atom, xyz)
        pa.field("ref_distances", _VEC), pa.field("ref_energies", _VEC), pa.field("ref_forces", _VEC),
    ])

    Options = Protocol
    formats = (DIATOMICS_FORMAT,)

    @property
    def protocol(self) -> Protocol:
        return self.options

    def accepts(self, atoms: Atoms) -> str | None:
        if "reference" not in atoms.info or "element" not in atoms.info:
            return ("diatomics reads reference dimer curves (matbench-discovery's diatomics-dft.json.gz "
                    "layout, a *.json.gz file), not single structures")
        return None

    def run(self, potential: Potential, records: list[Atoms]) -> list[dict]:
        protocol, rows = self.protocol, []
        for i, atoms in enumerate(records):
            t0 = time.perf_counter()
            element = atoms.info["element"]
            # Like with like: an r2SCAN model (its card's `functional`) against the r2SCAN curves.
            functional = potential.card.functional if potential.card.functional in atoms.info["reference"] \
                else protocol.functional
            row: dict[str, Any] = {"id": record_id(atoms, i), "element": element, "functional": functional}
            reference = atoms.info["reference"].get(functional)
            if element in protocol.skip_elements:
                row.update(status="ok", reason=None,
                           skipped="not scored for any model (absent from the Materials Project, see the task)")
            elif reference is None:
                row.update(status="failed", reason=f"the dataset has no {functional} curve for {row['id']}; "
                                                   f"it has {', '.join(atoms.info['reference'])}")
            else:
                row.update(ref_distances=reference["distances"], ref_energies=reference["energies"],
                           ref_forces=np.ravel(reference["forces"]).tolist())
                try:
                    row.update(self._curve(potential, element, reference["distances"], protocol))
                    row.update(status="ok", reason=None)
                except Exception as exc:  # recorded, never fatal: one dimer must not sink a run
                    row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
        return rows

    @staticmethod
    def _curve(potential: Potential, element: str, distances: list[float], protocol: Protocol) -> dict:
        n = len(distances)
        index = sorted({*range(0, n, protocol.every), n - 1})  # the last point anchors the energy zero
        c = protocol.box / 2
        dimers = []
        for i in index:
            d = distances[i]
            dimer = Atoms([element, element], positions=[[c, c, c], [c + d, c, c]], cell=[protocol.box] * 3, pbc=True)
            dimer.info["id"] = f"{element}-{element} at {d:.4f} Å"  # how a failure names the point
            dimers.append(dimer)
        predictions = potential.predict(dimers, properties=("energy", "forces"))
        return {"point_index": index, "energies": [p.energy for p in predictions],
                "forces": np.concatenate([p.forces.ravel() for p in predictions]).tolist()}

    # -----------------------------------------------------------------------------------------
    # Metrics

    def reduce(self, table: pa.Table) -> pa.Table:
        """Each dimer's metrics as columns (NaN where undefined, null where the dimer is not
        scored): the curve analysis runs once per row, however often the rows are scored again
        (the bootstrap, rankings); the curves stay in the predictions file."""
        if table.schema.metadata and REDUCED in table.schema.metadata:
            return table
        protocol = self.protocol
        per_row = [element_metrics(r, protocol) if r["status"] == "ok" and not r["skipped"] else None
                   for r in table.select(self.schema.names).to_pylist()]
        columns = {name: table.column(name) for name in ("id", "status", "element", "skipped")}
        for key in ROW_METRICS:
            columns[key] = pa.array([None if x is None else float(x[key]) for x in per_row], pa.float64())
        return pa.table(columns).replace_schema_metadata({REDUCED: b"diatomics"})

    def _per_row(self, table: pa.Table) -> list[dict[str, float] | None]:
        """Per row: its element's metrics (NaN where undefined), or None when not scored."""
        rows = self.reduce(table)
        values = [rows.column(key).to_pylist() for key in ROW_METRICS]
        return [None if row[0] is None else dict(zip(ROW_METRICS, row, strict=True)) for row in zip(*values)]

    def metrics(self, table: pa.Table) -> dict[str, Any]:
        per_row = self._per_row(table)
        counted = [not skipped for skipped in table.column("skipped").to_pylist()]  # failed rows count
        scored = [x for x in per_row if x is not None]
        out: dict[str, Any] = {}
        for key in PER_ELEMENT:
            values = [x[key] for x in scored if np.isfinite(x[key])]
            out[key] = float(np.mean(values)) if values else None
        out["coverage"] = len(scored) / sum(counted) if any(counted) else None
        out["n_elements"] = int(sum(counted))
        out["n_scored"] = len(scored)
        out["n_compared"] = int(sum(np.isfinite(x["energy_mae"]) for x in scored))
        elements = table.column("element").to_pylist()
        out["elements"] = {elements[i]: {k: (float(v) if np.isfinite(v) else None) for k, v in x.items()}
                           for i, x in enumerate(per_row) if x is not None}
        return out

    def metric_terms(self, table: pa.Table) -> Terms:
        """Every reported number is a mean over rows of a per-row value where defined, so each
        bootstrap resample is a ratio of weighted sums (an element's own value: itself, when drawn)."""
        per_row = self._per_row(table)
        counted = np.array([not skipped for skipped in table.column("skipped").to_pylist()], dtype=float)
        terms: Terms = {"coverage": (np.array([x is not None for x in per_row], dtype=float), counted)}
        for key in PER_ELEMENT:
            values = np.array([x[key] if x is not None else np.nan for x in per_row])
            defined = np.isfinite(values)
            terms[key] = (np.where(defined, values, 0.0), defined.astype(float))
        elements = np.array(table.column("element").to_pylist(), dtype=object)
        for i, x in enumerate(per_row):
            if x is None:
                continue
            mine = (elements == elements[i]).astype(float)  # a resample may draw it twice, or not at all
            for key, value in x.items():
                if np.isfinite(value):
                    terms[f"elements.{elements[i]}.{key}"] = (mine * value, mine)
        return terms


def element_metrics(row: dict[str, Any], protocol: Protocol) -> dict[str, float] | None:
    """One dimer's metrics from its row (NaN where a metric is undefined), or None when fewer
    than ``window.min_points`` evaluated points fall in the scored window."""
    element, w = row["element"], protocol.window
    ref_r = np.asarray(row["ref_distances"])
    ref_e = np.asarray(row["ref_energies"])
    index = np.asarray(row["point_index"])
    r, e_ref = ref_r[index], ref_e[index]
    f_ref = np.asarray(row["ref_forces"]).reshape(-1, 2, 3)[index]
    e = np.asarray(row["energies"])
    f = np.asarray(row["forces"]).reshape(-1, 2, 3)
    r_min, r_max = m.window(element, float(r[-1]), w.covalent, w.vdw)
    inside = (r >= r_min) & (r <= r_max)
    if inside.sum() < w.min_points:
        return None
    bond_force = f[inside, 0, 0]
    out = {
        "tortuosity": m.tortuosity(e[inside]),
        "energy_diff_flips": m.energy_diff_flips(e[inside], protocol.energy_flat),
        "energy_jump": m.energy_jump(e[inside], protocol.energy_flat),
        "force_flips": m.force_flips(bond_force, protocol.force_flat),
        "force_jump": m.force_jump(bond_force),
        "force_total_variation": m.force_total_variation(bond_force),
    }
    out.update(dict.fromkeys(VS_REFERENCE, np.nan))
    if reference_is_jumpy(element, ref_r, ref_e, protocol):
        return out
    ri, er, ep = r[inside], e_ref[inside], e[inside]
    out["energy_mae"] = m.energy_mae(ri, er, ep, protocol.grid_points)
    out["force_mae"] = m.force_mae(ri, f_ref[inside], f[inside], protocol.grid_points)
    if m.well_depth(er) >= protocol.min_well_depth:
        (r_eq_ref, k_ref), (r_eq, k) = m.quadratic_well(ri, er), m.quadratic_well(ri, ep)
        out["bond_length_error"] = abs(r_eq - r_eq_ref)
        out["well_depth_error"] = abs(m.well_depth(ep) - m.well_depth(er))
        out["vib_freq_error"] = abs(m.wavenumber(element, k) - m.wavenumber(element, k_ref))
    wall = (r >= m.window(element, r_max, w.wall_covalent, w.vdw)[0] - 1e-12) & (r <= r_max)
    if wall.sum() >= 2:  # the wall metric starts lower: from the reference's first point
        out["wall_dist_mae"] = m.wall_dist_mae(r[wall], e_ref[wall], e[wall], protocol.wall_heights)
    return out


def reference_is_jumpy(element: str, ref_r: np.ndarray, ref_e: np.ndarray, protocol: Protocol) -> bool:
    """The full reference curve, in its window, turns too often by too much (see ReferenceQuality)."""
    w, q = protocol.window, protocol.reference_quality
    r_min, r_max = m.window(element, float(ref_r[-1]), w.covalent, w.vdw)
    e = ref_e[(ref_r >= r_min) & (ref_r <= r_max)]
    if len(e) < w.min_points:
        return False
    return (m.energy_jump(e, protocol.energy_flat) >= q.min_energy_jump
            and m.energy_diff_flips(e, protocol.energy_flat) >= q.min_energy_flips)
