"""OC20's three tasks, scored exactly as fairchem's v1 evaluator scores them (see metrics.py).

- S2EF: energy and forces of a given structure (trajectory frames).
- IS2RE: relaxed energy from the initial structure, by relaxing with the model.
- IS2RS: relaxed structure from the initial structure, from the same relaxations.

IS2RE and IS2RS produce identical per-structure rows (energy and positions of the relaxation), so
they share a work key and the runner relaxes each structure once for both.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
from ase import Atoms

from mlip_zoo.evaluators.base import Evaluator
from mlip_zoo.evaluators.data import free_mask, record_id
from mlip_zoo.evaluators.oc20 import metrics as m
from mlip_zoo.evaluators.relax import RelaxProtocol, relax
from mlip_zoo.zoo.potential import Potential

_COMMON = [
    pa.field("id", pa.string()),
    pa.field("split", pa.string()),
    pa.field("n_atoms", pa.int32()),
    pa.field("status", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("seconds", pa.float64()),
]
_VEC = pa.list_(pa.float64())


def _split(atoms: Atoms) -> str:
    return str(atoms.info.get("split", "all"))


def _failed(atoms: Atoms, index: int, exc: Exception, seconds: float) -> dict[str, Any]:
    return {"id": record_id(atoms, index), "split": _split(atoms), "n_atoms": len(atoms), "status": "failed",
            "reason": f"{type(exc).__name__}: {exc}", "seconds": seconds}


def _by_split(rows: list[dict], compute, splits: list[str]) -> dict[str, Any]:
    """Overall metrics plus the same metrics per split (an empty split reports None values)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["split"]].append(row)
    out: dict[str, Any] = m.values(compute(rows))
    names = list(dict.fromkeys([*splits, *sorted(groups)]))
    out["splits"] = {s: {**m.values(compute(groups.get(s, []))), "n": len(groups.get(s, []))}
                     for s in names if s != "all"}
    return out


def _terms_by_split(table: pa.Table, compute, splits: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-row (total, numel) of everything ``_by_split`` reports: every OC20 metric merges as
    sum(total) / sum(numel), so the bootstrap can resample these sums directly (its fast path)."""
    rows = table.to_pylist()
    ok = np.array([r["status"] == "ok" for r in rows])
    per_row = [compute([r]) if good else {} for r, good in zip(rows, ok)]
    overall = {key: (np.array([p[key].total if p else 0.0 for p in per_row]),
                     np.array([p[key].numel if p else 0 for p in per_row], dtype=float)) for key in compute([])}
    out = dict(overall)
    split = np.array([r["split"] for r in rows], dtype=object)
    for s in dict.fromkeys([*splits, *sorted(set(split[ok].tolist()))]):
        if s != "all":
            mask = split == s
            out.update({f"splits.{s}.{key}": (total * mask, numel * mask) for key, (total, numel) in overall.items()})
    return out


class S2EF(Evaluator):
    schema = pa.schema([*_COMMON, pa.field("energy_true", pa.float64()), pa.field("energy_pred", pa.float64()),
                        pa.field("forces_true", _VEC), pa.field("forces_pred", _VEC),
                        pa.field("free", pa.list_(pa.bool_()))])

    def accepts(self, atoms: Atoms) -> str | None:
        if atoms.calc is None or "energy" not in atoms.calc.results or "forces" not in atoms.calc.results:
            return "S2EF needs reference energy and forces on every record"
        return None

    def run(self, potential: Potential, records: list[Atoms]) -> list[dict]:
        rows = []
        for i, atoms in enumerate(records):
            t0 = time.perf_counter()
            try:
                (pred,) = potential.predict([atoms], properties=("energy", "forces"))
                rows.append({
                    "id": record_id(atoms, i), "split": _split(atoms), "n_atoms": len(atoms), "status": "ok",
                    "reason": None, "seconds": time.perf_counter() - t0,
                    "energy_true": float(atoms.calc.results["energy"]), "energy_pred": pred.energy,
                    "forces_true": np.asarray(atoms.calc.results["forces"], float).ravel().tolist(),
                    "forces_pred": pred.forces.ravel().tolist(), "free": free_mask(atoms).tolist()})
            except Exception as exc:  # recorded, never fatal: one structure must not sink a run
                rows.append(_failed(atoms, i, exc, time.perf_counter() - t0))
        return rows

    def _compute(self, rows):
        return m.s2ef_metrics(
            [r["energy_true"] for r in rows], [r["energy_pred"] for r in rows],
            [np.reshape(r["forces_true"], (-1, 3)) for r in rows],
            [np.reshape(r["forces_pred"], (-1, 3)) for r in rows],
            [np.asarray(r["free"], bool) for r in rows],
            energy_threshold=self.config.options["energy_threshold"],
            force_threshold=self.config.options["force_threshold"])

    def metrics(self, table: pa.Table) -> dict[str, Any]:
        return _by_split([r for r in table.to_pylist() if r["status"] == "ok"], self._compute, self.config.splits)

    def metric_terms(self, table: pa.Table) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return _terms_by_split(table, self._compute, self.config.splits)


class _Relaxation(Evaluator):
    """Relax each initial structure with the model; rows carry energy and positions."""

    schema = pa.schema([*_COMMON, pa.field("energy_true", pa.float64()), pa.field("energy_pred", pa.float64()),
                        pa.field("pos_true", _VEC), pa.field("pos_pred", _VEC), pa.field("cell", _VEC),
                        pa.field("pbc", pa.list_(pa.bool_())), pa.field("free", pa.list_(pa.bool_())),
                        pa.field("converged", pa.bool_()), pa.field("steps", pa.int32())])

    @property
    def protocol(self) -> RelaxProtocol:
        return RelaxProtocol.model_validate(self.config.options["relax"])

    def work_key(self) -> str:
        # Same dataset + same relaxation protocol = same rows, whichever of IS2RE/IS2RS asks.
        return "oc20-relax:" + self.protocol.model_dump_json()

    def accepts(self, atoms: Atoms) -> str | None:
        if "y_relaxed" not in atoms.info or "pos_relaxed" not in atoms.arrays:
            return "IS2RE/IS2RS need info['y_relaxed'] and the per-atom array 'pos_relaxed'"
        return None

    def run(self, potential: Potential, records: list[Atoms]) -> list[dict]:
        rows, protocol = [], self.protocol
        for i, atoms in enumerate(records):
            t0 = time.perf_counter()
            try:
                potential.check_elements(atoms, i)
                result = relax(atoms, potential, protocol)
                rows.append({
                    "id": record_id(atoms, i), "split": _split(atoms), "n_atoms": len(atoms), "status": "ok",
                    "reason": None, "seconds": time.perf_counter() - t0,
                    "energy_true": float(atoms.info["y_relaxed"]), "energy_pred": result.energy,
                    "pos_true": np.asarray(atoms.arrays["pos_relaxed"], float).ravel().tolist(),
                    "pos_pred": result.atoms.get_positions().ravel().tolist(),
                    "cell": np.asarray(atoms.cell, float).ravel().tolist(), "pbc": [bool(p) for p in atoms.pbc],
                    "free": free_mask(atoms).tolist(), "converged": result.converged, "steps": result.steps})
            except Exception as exc:
                rows.append(_failed(atoms, i, exc, time.perf_counter() - t0))
        return rows


class IS2RE(_Relaxation):
    def _compute(self, rows):
        return m.is2re_metrics([r["energy_true"] for r in rows], [r["energy_pred"] for r in rows],
                               energy_threshold=self.config.options["energy_threshold"])

    def metrics(self, table: pa.Table) -> dict[str, Any]:
        rows = [r for r in table.to_pylist() if r["status"] == "ok"]
        out = _by_split(rows, self._compute, self.config.splits)
        out["converged_fraction"] = float(np.mean([r["converged"] for r in rows])) if rows else None
        return out

    def metric_terms(self, table: pa.Table) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        ok = np.array([s == "ok" for s in table.column("status").to_pylist()], dtype=float)
        converged = np.array([bool(c) for c in table.column("converged").to_pylist()], dtype=float)
        return {**_terms_by_split(table, self._compute, self.config.splits),
                "converged_fraction": (converged * ok, ok)}


class IS2RS(_Relaxation):
    def _compute(self, rows):
        return m.is2rs_metrics([np.reshape(r["pos_true"], (-1, 3)) for r in rows],
                               [np.reshape(r["pos_pred"], (-1, 3)) for r in rows],
                               [np.reshape(r["cell"], (3, 3)) for r in rows], [r["pbc"] for r in rows],
                               [np.asarray(r["free"], bool) for r in rows])

    def metrics(self, table: pa.Table) -> dict[str, Any]:
        return _by_split([r for r in table.to_pylist() if r["status"] == "ok"], self._compute, self.config.splits)

    def metric_terms(self, table: pa.Table) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return _terms_by_split(table, self._compute, self.config.splits)
