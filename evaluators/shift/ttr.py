"""Test-time refinement (``ttr``): how much two refinements that need no reference labels repair
a model's errors on shifted structures, and what they cost (Kreiman & Krishnapriyan, 2025).

Every structure is predicted three ways, all scored against the same reference labels:

- **before**: the model as loaded;
- **radius refinement** (capability ``radius_refinement``): r* from the grid of the config that
  brings the structure's radius-graph spectrum closest to the mean training spectrum (built at the
  model's own cutoff, from the task's reference set), then a prediction with the graph radius at
  r* (``Potential.with_cutoff``; a radius at or beyond the trained cutoff is the unrefined model,
  so that prediction is reused);
- **test-time training** (capability ``test_time_training``): the whole test set labelled by a
  cheap prior (a zoo model, EMT by default), ``Potential.test_time_train`` on those labels, then a
  prediction with the trained copy (see ``zoo/ttt.py``).

A family without a capability gets ``n/a`` with the reason in its rows, never a failure. TTT
trains on the whole test set, so the task runs as one shard: the numbers cannot depend on how many
workers ran it. Each row keeps the three predictions and the seconds each method spent on it
(TTT's training time shared equally over the structures it trained on), so every metric is a pure
function of the predictions table.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
from ase import Atoms
from pydantic import BaseModel, ConfigDict, Field

from mlip_zoo.evaluators.base import Evaluator
from mlip_zoo.evaluators.data import free_mask, record_id
from mlip_zoo.evaluators.shift.ood import EmbeddedSet, reference_dataset
from mlip_zoo.zoo.potential import Potential
from mlip_zoo.zoo.ttt import TTTProtocol

_VEC = pa.list_(pa.float64())
METHODS = ("radius", "ttt")


class RadiusOptions(BaseModel):
    """The r* grid, ``np.linspace(start, stop, num)``, and the radius graph's neighbour cap."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    start: float = Field(gt=0)
    stop: float = Field(gt=0)
    num: int = Field(gt=0)
    max_neighbors: int = Field(gt=0)

    @property
    def radii(self) -> np.ndarray:
        return np.linspace(self.start, self.stop, self.num)


class TTTOptions(TTTProtocol):
    prior: str  # model key of the prior that labels the test structures


class TTROptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    reference: EmbeddedSet | str  # the training set: {dataset, file} of an embedded set, or a path
    radius: RadiusOptions
    ttt: TTTOptions


def _method_fields(method: str) -> list[pa.Field]:
    return [pa.field(f"{method}_status", pa.string()), pa.field(f"{method}_reason", pa.string()),
            pa.field(f"{method}_energy", pa.float64()), pa.field(f"{method}_forces", _VEC),
            pa.field(f"{method}_seconds", pa.float64())]


class TTR(Evaluator):
    # the prediction columns that come from the dataset, not the model (``id`` is always one)
    reference_columns = ("split", "n_atoms", "energy_true", "forces_true", "free")
    schema = pa.schema([
        pa.field("id", pa.string()), pa.field("split", pa.string()), pa.field("n_atoms", pa.int32()),
        pa.field("status", pa.string()), pa.field("reason", pa.string()), pa.field("seconds", pa.float64()),
        pa.field("energy_true", pa.float64()), pa.field("forces_true", _VEC), pa.field("free", pa.list_(pa.bool_())),
        pa.field("energy_pred", pa.float64()), pa.field("forces_pred", _VEC),
        *_method_fields("radius"), pa.field("radius_cutoff", pa.float64()),  # r* asked for
        pa.field("radius_cutoff_used", pa.float64()),  # the radius in effect (capped at the trained cutoff)
        pa.field("prior_energy", pa.float64()), pa.field("prior_forces", _VEC), pa.field("prior_seconds", pa.float64()),
        *_method_fields("ttt"),
    ])

    Options = TTROptions

    def work_key(self) -> str:
        # The reference file decides every r*: a new file, new shards.
        return f"{self.key}:{self.config.fingerprint()}:{reference_dataset(self.options.reference).sha256}"

    def provenance(self) -> dict[str, Any]:
        # The mean training spectrum is taken at each model's own cutoff, so the cache file is
        # per model; the reference set it comes from is what identifies it.
        ref = reference_dataset(self.options.reference)
        return {"training_reference": {"file": str(ref.path), "sha256": ref.sha256}}

    def accepts(self, atoms: Atoms) -> str | None:
        if atoms.calc is None or "energy" not in atoms.calc.results or "forces" not in atoms.calc.results:
            return "ttr needs reference energy and forces on every record"
        return None

    # -- per-structure work ---------------------------------------------------------------------

    def run(self, potential: Potential, records: list[Atoms]) -> list[dict]:
        rows = [self._before(potential, atoms, i) for i, atoms in enumerate(records)]
        ok = [i for i, row in enumerate(rows) if row["status"] == "ok"]
        self._radius(potential, records, rows, ok)
        self._ttt(potential, records, rows, ok)
        return rows

    def _before(self, potential: Potential, atoms: Atoms, index: int) -> dict[str, Any]:
        row = {name: None for name in self.schema.names}
        row.update(id=record_id(atoms, index), split=str(atoms.info.get("split", "all")), n_atoms=len(atoms),
                   energy_true=float(atoms.calc.results["energy"]),
                   forces_true=np.asarray(atoms.calc.results["forces"], float).ravel().tolist(),
                   free=free_mask(atoms).tolist())
        t0 = time.perf_counter()
        try:
            (pred,) = potential.predict([atoms], properties=("energy", "forces"))
            row.update(status="ok", energy_pred=pred.energy, forces_pred=pred.forces.ravel().tolist())
        except Exception as exc:  # recorded, never fatal: one structure must not sink the run
            row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
        row["seconds"] = time.perf_counter() - t0
        for method in METHODS:
            if row["status"] != "ok":
                row.update({f"{method}_status": "failed", f"{method}_reason": "the unrefined prediction failed"})
        return row

    def _radius(self, potential: Potential, records: list[Atoms], rows: list[dict], ok: list[int]) -> None:
        if "radius_refinement" not in potential.card.capabilities:
            return _not_applicable(rows, ok, "radius", f"{potential.card.key}'s card has no `radius_refinement` "
                                                      "capability")
        from mlip_zoo.evaluators.shift.spectra import refine_radius
        from mlip_zoo.evaluators.shift.stats import StatsConfig, training_stats

        opts = self.options.radius
        try:
            reference = reference_dataset(self.options.reference).path
            stats, _ = training_stats(reference, StatsConfig(radius=potential.cutoff, max_neighbors=opts.max_neighbors))
        except Exception as exc:
            return _failed(rows, ok, "radius", f"training statistics: {type(exc).__name__}: {exc}")
        mean = np.asarray(stats.spectrum_mean)
        for i in ok:
            row, t0 = rows[i], time.perf_counter()
            try:
                r = refine_radius(records[i], mean, opts.radii, opts.max_neighbors)
                refined = potential.with_cutoff(r)
                row.update(radius_cutoff=r, radius_cutoff_used=refined.cutoff)
                if refined.cutoff == potential.cutoff:  # the unrefined model: its prediction stands
                    energy, forces = row["energy_pred"], row["forces_pred"]
                else:
                    (pred,) = refined.predict([records[i]], properties=("energy", "forces"))
                    energy, forces = pred.energy, pred.forces.ravel().tolist()
                row.update(radius_status="ok", radius_energy=energy, radius_forces=forces)
            except Exception as exc:
                row.update(radius_status="failed", radius_reason=f"{type(exc).__name__}: {exc}")
            row["radius_seconds"] = time.perf_counter() - t0

    def _ttt(self, potential: Potential, records: list[Atoms], rows: list[dict], ok: list[int]) -> None:
        if "test_time_training" not in potential.card.capabilities:
            return _not_applicable(rows, ok, "ttt", f"{potential.card.key}'s card has no `test_time_training` "
                                                    "capability")
        from mlip_zoo.zoo.registry import load_potential

        opts = self.options.ttt
        try:
            prior = load_potential(opts.prior, device="cpu")
        except Exception as exc:
            return _failed(rows, ok, "ttt", f"prior {opts.prior}: {type(exc).__name__}: {exc}")
        labelled = []
        for i in ok:
            t0 = time.perf_counter()
            try:
                (label,) = prior.predict([records[i]], properties=("energy", "forces"))
                rows[i].update(prior_energy=label.energy, prior_forces=label.forces.ravel().tolist())
                labelled.append(i)
            except Exception as exc:  # this structure is left out of training, still evaluated
                rows[i]["ttt_reason"] = f"prior {opts.prior} could not label it ({type(exc).__name__}: {exc})"
            rows[i]["prior_seconds"] = time.perf_counter() - t0
        if not labelled:
            return _failed(rows, ok, "ttt", f"prior {opts.prior} labelled no structure")
        protocol = opts.model_dump(exclude={"prior"})
        try:
            trained = potential.test_time_train(
                [records[i] for i in labelled], [rows[i]["prior_energy"] for i in labelled],
                [np.reshape(rows[i]["prior_forces"], (-1, 3)) for i in labelled],
                start_energies=[rows[i]["energy_pred"] for i in labelled], **protocol)
        except Exception as exc:
            return _failed(rows, ok, "ttt", f"test-time training: {type(exc).__name__}: {exc}")
        share = trained.ttt_report.seconds / len(labelled)
        for i in ok:
            row, t0 = rows[i], time.perf_counter()
            try:
                (pred,) = trained.predict([records[i]], properties=("energy", "forces"))
                row.update(ttt_status="ok", ttt_energy=pred.energy, ttt_forces=pred.forces.ravel().tolist())
            except Exception as exc:
                row.update(ttt_status="failed", ttt_reason=f"{type(exc).__name__}: {exc}")
            row["ttt_seconds"] = time.perf_counter() - t0 + (share if i in labelled else 0.0)

    # -- metrics --------------------------------------------------------------------------------

    def metrics(self, table: pa.Table) -> dict[str, Any]:
        rows = [r for r in table.to_pylist() if r["status"] == "ok"]
        out = _summary(rows)
        reasons = {m: r[f"{m}_reason"] for m in METHODS for r in rows if r[f"{m}_status"] == "n/a"}
        if reasons:
            out["not_applicable"] = reasons
        groups: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            groups[row["split"]].append(row)
        names = list(dict.fromkeys([*self.config.splits, *sorted(groups)]))
        out["splits"] = {s: {**_summary(groups.get(s, [])), "n": len(groups.get(s, []))} for s in names if s != "all"}
        return out


def _not_applicable(rows: list[dict], ok: list[int], method: str, reason: str) -> None:
    for i in ok:
        rows[i].update({f"{method}_status": "n/a", f"{method}_reason": reason})


def _failed(rows: list[dict], ok: list[int], method: str, reason: str) -> None:
    for i in ok:
        rows[i].update({f"{method}_status": "failed", f"{method}_reason": reason})


def _energy_mae(rows: list[dict], energy: str) -> float | None:
    """Energy MAE per atom (eV/atom, mean over structures) of column ``energy`` vs the reference."""
    return float(np.mean([abs(r[energy] - r["energy_true"]) / r["n_atoms"] for r in rows])) if rows else None


def _forces_mae(rows: list[dict], forces: str, truth: str = "forces_true") -> float | None:
    """Force MAE (eV/Å) of column ``forces`` vs column ``truth``: every free atom's every
    component, pooled over structures (as OC20's forces_mae)."""
    total = numel = 0
    for r in rows:
        free = np.asarray(r["free"], bool)
        diff = np.reshape(r[forces], (-1, 3))[free] - np.reshape(r[truth], (-1, 3))[free]
        total, numel = total + float(np.abs(diff).sum()), numel + diff.size
    return total / numel if numel else None


def _change(after: float | None, before: float | None) -> float | None:
    """Relative change of an error (negative: the refinement helped)."""
    return after / before - 1.0 if after is not None and before else None


def _seconds(rows: list[dict], *columns: str) -> float | None:
    values = [r[c] for r in rows for c in columns if r[c] is not None]
    return float(sum(values)) if values else None


def _summary(rows: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {"energy_mae": _energy_mae(rows, "energy_pred"), "forces_mae": _forces_mae(rows, "forces_pred"),
                           "seconds": _seconds(rows, "seconds")}
    for method in METHODS:
        done = [r for r in rows if r[f"{method}_status"] == "ok"]
        before, after = _forces_mae(done, "forces_pred"), _forces_mae(done, f"{method}_forces")
        out.update({f"{method}_n": len(done), f"{method}_energy_mae_before": _energy_mae(done, "energy_pred"),
                    f"{method}_energy_mae": _energy_mae(done, f"{method}_energy"),
                    f"{method}_forces_mae_before": before, f"{method}_forces_mae": after,
                    f"{method}_forces_mae_change": _change(after, before)})
    refined = [r["radius_cutoff_used"] for r in rows if r["radius_status"] == "ok"]
    out["radius_mean_cutoff"] = float(np.mean(refined)) if refined else None
    out["radius_seconds"] = _seconds(rows, "radius_seconds")
    out["ttt_seconds"] = _seconds(rows, "prior_seconds", "ttt_seconds")  # labelling is part of the cost
    # The quantity TTT optimises: the force error against the prior's own labels, before and after.
    labelled = [r for r in rows if r["ttt_status"] == "ok" and r["prior_forces"] is not None]
    out["ttt_prior_forces_mae_before"] = _forces_mae(labelled, "forces_pred", "prior_forces")
    out["ttt_prior_forces_mae"] = _forces_mae(labelled, "ttt_forces", "prior_forces")
    return out
