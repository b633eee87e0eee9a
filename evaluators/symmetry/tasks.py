"""The ``symmetry`` task: the conformance kit's checks (``mlip_zoo.zoo.conformance``) on every
structure of a dataset, reported as measured errors rather than judged.

Each row holds the raw per-trial relative errors of every check (rotations, translation,
permutation, supercell, finite-difference components) and, for records marked ``nve=True``, the
total-energy trace of the NVE run. Metrics are the max and mean of each error over all
structures and trials, and the NVE drift recomputed from the traces, so everything can be
recomputed from the predictions file. Approximately equivariant models get a number here
instead of an assumption; exactly equivariant float32 models land at their round-off (~1e-6).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
from ase import Atoms
from pydantic import BaseModel, ConfigDict

from mlip_zoo.evaluators.base import Evaluator
from mlip_zoo.evaluators.data import record_id
from mlip_zoo.zoo.conformance import BASIC_CHECKS, SYMMETRY_CHECKS, Protocol, nve_drift, run_checks
from mlip_zoo.zoo.potential import Potential

# (check, quantity) pairs the rows carry, one list column each: f"{check}_{quantity}".
QUANTITIES = {
    "rotation": ("energy", "forces", "stress_0e", "stress_2e"),
    "translation": ("energy", "forces", "stress"),
    "permutation": ("energy", "forces", "stress"),
    "supercell": ("energy", "forces", "stress"),
    "finite_difference": ("forces",),
}
ERROR_COLUMNS = [f"{check}_{q}" for check, qs in QUANTITIES.items() for q in qs]
_VEC = pa.list_(pa.float64())


class SymmetryOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    protocol: Protocol


class Symmetry(Evaluator):
    # the prediction columns that come from the dataset, not the model (``id`` is always one)
    reference_columns = ("kind", "n_atoms")
    schema = pa.schema([
        pa.field("id", pa.string()), pa.field("kind", pa.string()), pa.field("n_atoms", pa.int32()),
        pa.field("status", pa.string()), pa.field("reason", pa.string()), pa.field("seconds", pa.float64()),
        pa.field("net_force", pa.float64()),
        *[pa.field(c, _VEC) for c in ERROR_COLUMNS],
        pa.field("nve_times_ps", _VEC), pa.field("nve_energy_per_atom", _VEC),
        pa.field("nve_prerelax_steps", pa.int32()), pa.field("nve_prerelax_converged", pa.bool_()),
    ])

    Options = SymmetryOptions

    @property
    def protocol(self) -> Protocol:
        return self.options.protocol

    def run(self, potential: Potential, records: list[Atoms]) -> list[dict]:
        protocol, rows = self.protocol, []
        for i, atoms in enumerate(records):
            t0 = time.perf_counter()
            row: dict[str, Any] = {"id": record_id(atoms, i), "kind": str(atoms.info.get("kind", "")),
                                   "n_atoms": len(atoms)}
            try:
                checks = (*BASIC_CHECKS, *SYMMETRY_CHECKS, *(("nve",) if atoms.info.get("nve") else ()))
                report = run_checks(potential, atoms, protocol=protocol, checks=checks)
                broken = [c.summary() for c in report.checks if c.name in ("shapes", "finite", "no_mutation")
                          and not c.passed]
                if broken:  # not a symmetry error but a broken model: no number would mean anything
                    raise ValueError("; ".join(broken))
                row["net_force"] = report["net_force"].errors["net_force"][0]
                for check, quantities in QUANTITIES.items():
                    result = report[check]
                    for q in quantities:
                        row[f"{check}_{q}"] = [float(v) for v in result.errors.get(q, [])]
                if "nve" in checks:
                    trace = report["nve"].detail
                    row.update(nve_times_ps=trace["times_ps"], nve_energy_per_atom=trace["energy_per_atom"],
                               nve_prerelax_steps=trace["prerelax_steps"],
                               nve_prerelax_converged=trace["prerelax_converged"])
                row.update(status="ok", reason=None)
            except Exception as exc:  # recorded, never fatal: one structure must not sink a run
                row = {k: row[k] for k in ("id", "kind", "n_atoms")}
                row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
        return rows

    def _drifts(self, rows: list[dict[str, Any]]) -> list[float | None]:
        """Each row's NVE drift (None for a row without an NVE trace)."""
        nve = self.protocol.nve
        return [nve_drift(r["nve_times_ps"], r["nve_energy_per_atom"], nve.drop_fraction, nve.window)
                if r["nve_energy_per_atom"] else None for r in rows]

    def resampler(self, table: pa.Table):
        """Every max and mean of every resample at once: per row the max, sum and count of each
        error column; a resample's max is the largest row max among the rows it draws, its mean
        a ratio of weighted sums."""
        everything = table.to_pylist()
        ok = np.flatnonzero([r["status"] == "ok" for r in everything])
        rows = [everything[i] for i in ok]
        per_row = {f"{c}": [r[c] or [] for r in rows] for c in ERROR_COLUMNS}
        per_row["net_force"] = [[r["net_force"]] if r["net_force"] is not None else [] for r in rows]
        per_row["nve_drift"] = [[d] if d is not None else [] for d in self._drifts(rows)]
        stats = {}
        for name, lists in per_row.items():
            n = np.array([len(v) for v in lists], dtype=float)
            stats[name] = (n, np.array([float(np.max(v)) if v else -np.inf for v in lists]),
                           np.array([float(np.sum(v)) for v in lists]))

        def resampled(counts: np.ndarray) -> dict[str, np.ndarray]:
            drawn = counts[:, ok].astype(float)
            out = {}
            for name, (n, top, total) in stats.items():
                present = (drawn > 0) & (n > 0)
                top_drawn = np.where(present, top, -np.inf).max(axis=1, initial=-np.inf)
                out[f"{name}_max"] = np.where(present.any(axis=1), top_drawn, np.nan)
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[f"{name}_mean"] = np.where(drawn @ n > 0, (drawn @ total) / (drawn @ n), np.nan)
            del out["net_force_mean"]  # not a metric
            return out

        return resampled

    def metrics(self, table: pa.Table) -> dict[str, Any]:
        rows = [r for r in table.to_pylist() if r["status"] == "ok"]
        out: dict[str, Any] = {}
        for column in ERROR_COLUMNS:
            values = [v for r in rows for v in (r[column] or [])]
            out[f"{column}_max"] = float(np.max(values)) if values else None
            out[f"{column}_mean"] = float(np.mean(values)) if values else None
        forces = [r["net_force"] for r in rows if r["net_force"] is not None]
        out["net_force_max"] = float(np.max(forces)) if forces else None
        drifts = [d for d in self._drifts(rows) if d is not None]
        out["nve_drift_max"] = float(np.max(drifts)) if drifts else None
        out["nve_drift_mean"] = float(np.mean(drifts)) if drifts else None
        out["nve_n"] = len(drifts)
        return out
