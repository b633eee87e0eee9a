"""``ood-shift``: how a model's errors grow with distribution shift (Kreiman & Krishnapriyan, 2025).

Each test structure is placed against a training (reference) set on three axes -- element,
force norm, connectivity (see ``stats``) -- from its labels and geometry alone, so the placement
is the same for every model. The model's energy and forces are then scored overall, for
structures in distribution on every axis vs out of distribution on at least one, per axis
(in vs out), per bin of each axis's score, and per dataset split.

The reference (``options.reference``) is an embedded set (``{dataset, file}``), a path to a
labelled file, the name of a statistics-only reference (``mptrj``: MPtrj, whose structures are not
shipped), or ``auto``: MPtrj for a model whose card names it among its ``training_sets``, else the
reference of the task's shipped config (resolved per model by ``for_card``, before any work).

The training statistics of a set are computed once per reference file and cached (``stats``); the
cache file and its sha256, or the statistics-only reference's files and constants, go into the
result's provenance. Rows carry the scores and OOD flags, so the metrics are a pure function of
the predictions table; an axis the reference cannot place structures on (null on every row) is
reported as n/a with its reason, and "OOD on any axis" counts the available axes only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from ase import Atoms
from pydantic import BaseModel, ConfigDict, Field

from mlip_zoo.errors import ConfigError
from mlip_zoo.evaluators import plots as plotting
from mlip_zoo.evaluators.base import Evaluator, TaskConfig, load_task_config
from mlip_zoo.evaluators.data import Dataset, free_mask, record_id, resolve_dataset, sha256_file
from mlip_zoo.evaluators.shift.stats import (AXES, MPTRJ, STATISTICS_REFERENCES, UNAVAILABLE, StatisticsReference,
                                             StatsConfig, TrainingStats, reference_forces, training_stats)
from mlip_zoo.zoo.card import ModelCard
from mlip_zoo.zoo.potential import Potential

_VEC = pa.list_(pa.float64())
AUTO = "auto"  # reference: MPtrj when the model was trained on it, else the task's shipped reference


class EmbeddedSet(BaseModel):
    """A dataset shipped under configs/datasets/: its folder and file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    dataset: str
    file: str


class Bins(BaseModel):
    """Bin edges of each axis score: bins are "< first", [a, b) between edges, ">= last"."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    element: list[float] = Field(min_length=1)
    force_norm: list[float] = Field(min_length=1)
    connectivity: list[float] = Field(min_length=1)


class OODShiftOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # an embedded set, a path to a labelled file, a statistics-only reference (mptrj) or auto
    reference: EmbeddedSet | str
    stats: StatsConfig = StatsConfig()
    bins: Bins


def reference_dataset(option: EmbeddedSet | dict | str) -> Dataset:
    """The training set a task's ``reference`` option names: ``{dataset, file}`` of an embedded
    set (checked against its manifest) or a path to the user's own file."""
    if isinstance(option, dict):
        option = EmbeddedSet.model_validate(option)
    if isinstance(option, EmbeddedSet):
        return resolve_dataset(option.dataset, option.file)
    if option in STATISTICS_REFERENCES or option == AUTO:
        raise ConfigError(f"options.reference {option!r} names no training structures, which this task needs; "
                          "give an embedded set {dataset, file} or the path of a labelled file")
    return resolve_dataset("", "", Path(option))


def trained_on_mptrj(card: ModelCard) -> bool:
    return any(name.strip().lower() == MPTRJ for name in card.training_sets)


def unavailable_axes(table: pa.Table) -> dict[str, str]:
    """Axes with no score on any row (the reference cannot place structures there) and why."""
    out = {}
    for axis in AXES:
        nulls, n = table.column(f"ood_{axis}").null_count, table.num_rows
        if n and nulls == n and axis in UNAVAILABLE:
            out[axis] = UNAVAILABLE[axis]
        elif nulls:
            raise ValueError(f"ood_{axis} is null on {nulls} of {n} rows: a reference places every structure on an "
                             f"axis{' or none' if axis in UNAVAILABLE else ''}; rerun the evaluation")
    return out


def bin_labels(edges: list[float]) -> list[str]:
    """Bins below, between and above ``edges``: ``< e0``, ``[e0, e1)``, ..., ``>= eN``."""
    return ([f"< {edges[0]:g}"] + [f"[{a:g}, {b:g})" for a, b in zip(edges, edges[1:])]
            + [f">= {edges[-1]:g}"])


class OODShift(Evaluator):
    # the prediction columns that come from the dataset, not the model (``id`` is always one)
    reference_columns = ("split", "n_atoms", "energy_true", "forces_true", "free", "shift_element", "shift_force_norm",
                         "shift_connectivity", "ood_element", "ood_force_norm", "ood_connectivity")
    Options = OODShiftOptions
    schema = pa.schema([
        pa.field("id", pa.string()), pa.field("split", pa.string()), pa.field("n_atoms", pa.int32()),
        pa.field("status", pa.string()), pa.field("reason", pa.string()), pa.field("seconds", pa.float64()),
        pa.field("energy_true", pa.float64()), pa.field("energy_pred", pa.float64()),
        pa.field("forces_true", _VEC), pa.field("forces_pred", _VEC), pa.field("free", pa.list_(pa.bool_())),
        *[pa.field(f"shift_{a}", pa.float64()) for a in AXES], *[pa.field(f"ood_{a}", pa.bool_()) for a in AXES],
    ])

    _stats: tuple[TrainingStats, Path] | tuple[StatisticsReference, None] | None = None

    def for_card(self, card: ModelCard) -> TaskConfig:
        """``reference: auto`` resolved for the model: MPtrj when its card's ``training_sets`` name
        it, else the reference of the task's shipped config."""
        if self.options.reference != AUTO:
            return self.config
        reference = MPTRJ if trained_on_mptrj(card) else load_task_config(self.key).options.get("reference")
        if reference in (AUTO, None):
            raise ConfigError(f"configs/tasks/{self.key}.yaml: reference auto falls back to the task's own reference "
                              f"for {card.key} (not trained on MPtrj); set options.reference there to a training set "
                              "({dataset, file}, a path or mptrj)")
        return self.config.model_copy(update={"options": {**self.config.options, "reference": reference}})

    def training_stats(self) -> tuple[TrainingStats, Path] | tuple[StatisticsReference, None]:
        """The reference's statistics and their cache file (computed on first use; a
        statistics-only reference has no cache file)."""
        if self._stats is None:
            option = self.options.reference
            if option == AUTO:
                raise ConfigError(f"task {self.key}: reference auto depends on the model; resolve it with "
                                  "Evaluator.for_card(card) first (mlipzoo eval does)")
            if isinstance(option, str) and option in STATISTICS_REFERENCES:
                self._stats = STATISTICS_REFERENCES[option](), None
            else:
                self._stats = training_stats(reference_dataset(option).path, self.options.stats)
        return self._stats

    def work_key(self) -> str:
        # The reference's content decides every row's shift scores: a new file, new shards.
        # (Asked on the driver before any shard runs, so workers find the statistics cached.)
        stats, _ = self.training_stats()
        digest = stats.digest if isinstance(stats, StatisticsReference) else stats.reference.sha256
        return f"{self.key}:{self.config.fingerprint()}:{digest}"

    def provenance(self) -> dict[str, Any]:
        stats, path = self.training_stats()
        if isinstance(stats, StatisticsReference):
            return {"training_stats": stats.model_dump(exclude={"element_fraction"})}
        return {"training_stats": {"file": str(path), "sha256": sha256_file(path),
                                   "reference": stats.reference.model_dump(), "config": stats.config.model_dump()}}

    def plots(self, table: pa.Table, metrics: dict[str, Any]) -> dict[str, Any] | None:
        """The generic plots, and the force error per bin of each shift axis, from the metrics
        themselves; an n/a axis (the reference cannot place structures there) has no bins."""
        out = super().plots(table, metrics)
        axes = metrics.get("axes")
        if isinstance(axes, dict):
            out["shift"] = {axis: {"x": [b["range"] for b in d["bins"].values()],
                                   "y": [b["forces_mae"] for b in d["bins"].values()],
                                   "n": [b["n"] for b in d["bins"].values()]}
                            for axis, d in axes.items() if "bins" in d}
        return out

    def figures(self, data: dict[str, dict[str, Any]]) -> list[plotting.Figure]:
        """Force parity, then force MAE per bin of each axis some model has bins on (never an
        empty figure for an axis that is n/a against the reference)."""
        reference = self.options.reference
        if isinstance(reference, str) and reference in STATISTICS_REFERENCES:  # the column keeps its name
            force = ("force tail", "share of free-atom force components in the training |F| tail")
        elif reference == AUTO:  # per model: MPtrj's rule for MPtrj-trained models
            force = ("force", "mean |F| of the labels (eV/Å), or against MPtrj the share of force components "
                              "in its |F| tail")
        else:
            force = ("force norm", "mean |F| of the labels (eV/Å)")
        labels = {"element": ("element", "share of absent or rare-element atoms"), "force_norm": force,
                  "connectivity": ("connectivity", "spectral distance from training")}
        present = {axis for d in data.values() for axis in d.get("shift", {})}
        return [plotting.FORCES_PARITY,
                *(plotting.Figure("shift", f"Force MAE vs {labels[a][0]} shift (per bin)", axis=a, xlabel=labels[a][1])
                  for a in AXES if a in present)]

    def accepts(self, atoms: Atoms) -> str | None:
        if atoms.calc is None or "energy" not in atoms.calc.results or "forces" not in atoms.calc.results:
            return "ood-shift needs reference energy and forces on every record"
        return None

    def run(self, potential: Potential, records: list[Atoms]) -> list[dict]:
        stats, _ = self.training_stats()
        rows = []
        for i, atoms in enumerate(records):
            t0 = time.perf_counter()
            rid = record_id(atoms, i)
            forces_true = reference_forces(atoms, rid)
            scores = stats.scores(atoms, forces_true)  # labels and geometry only: the same for every model
            row = {"id": rid, "split": str(atoms.info.get("split", "all")), "n_atoms": len(atoms),
                   "energy_true": float(atoms.calc.results["energy"]), "forces_true": forces_true.ravel().tolist(),
                   "free": free_mask(atoms).tolist(),
                   **{f"shift_{a}": scores[a] for a in AXES},
                   **{f"ood_{a}": stats.is_ood(a, scores[a]) for a in AXES}}
            try:
                (pred,) = potential.predict([atoms], properties=("energy", "forces"))
                row.update(status="ok", reason=None, energy_pred=pred.energy, forces_pred=pred.forces.ravel().tolist())
            except Exception as exc:  # recorded, never fatal: one structure must not sink a run
                row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
        return rows

    # -- metrics: every number is sum(total) / sum(numel) over rows, so the terms serve both
    # metrics() and the bootstrap's fast path.

    def _groups(self, table: pa.Table) -> dict[str, np.ndarray]:
        """Row masks of every group a metric is reported for, keyed by its dotted prefix."""
        axes = [a for a in AXES if a not in unavailable_axes(table)]
        cols = table.select(["split", "status", *[f"shift_{a}" for a in axes], *[f"ood_{a}" for a in axes]])
        data = cols.to_pydict()
        ok = np.array([s == "ok" for s in data["status"]], dtype=bool)
        ood = {a: np.array(data[f"ood_{a}"], dtype=bool) for a in axes}
        any_ood = np.logical_or.reduce([ood[a] for a in axes]) if len(ok) and axes else np.zeros(len(ok), bool)
        # "id_"/"ood_": in distribution on every available axis / out on at least one (flat: headline metrics)
        groups = {"": ok, "id_": ok & ~any_ood, "ood_": ok & any_ood}
        for a in axes:
            groups[f"axes.{a}.id."] = ok & ~ood[a]
            groups[f"axes.{a}.ood."] = ok & ood[a]
            score = np.array(data[f"shift_{a}"], dtype=float)
            edges = getattr(self.options.bins, a)
            index = np.searchsorted(np.asarray(edges, float), score, side="right")
            for b, _ in enumerate(bin_labels(edges)):
                groups[f"axes.{a}.bins.bin{b}."] = ok & (index == b)
        splits = list(dict.fromkeys([*self.config.splits, *sorted(set(data["split"]))]))
        for s in splits:
            groups[f"splits.{s}."] = ok & np.array([x == s for x in data["split"]], dtype=bool)
        return groups

    def reduce(self, table: pa.Table) -> pa.Table:
        """Rows of the group columns and the per-row error terms (no per-atom arrays)."""
        if "forces_true" not in table.column_names:
            return table  # reduced already
        keep = ["id", "split", "status", *[f"{p}_{a}" for a in AXES for p in ("shift", "ood")]]
        columns = {name: table.column(name) for name in keep}
        for name, (total, numel) in self._row_terms(table).items():
            columns[f"{name}:total"], columns[f"{name}:numel"] = pa.array(total), pa.array(numel)
        return pa.table(columns)

    def _row_terms(self, table: pa.Table) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per-row (total, numel) of each error metric over the free atoms (fixed ones, held by
        FixAtoms, are not scored, as in S2EF); zeros on failed rows."""
        n = table.num_rows
        if "forces_true" not in table.column_names:  # reduced rows carry them
            return {name.removesuffix(":total"): (table.column(name).to_numpy(),
                                                  table.column(name.replace(":total", ":numel")).to_numpy())
                    for name in table.column_names if name.endswith(":total")}
        e_abs, f_abs, f_n, cos, n_atoms = (np.zeros(n) for _ in range(5))
        data = table.select(["status", "n_atoms", "energy_true", "energy_pred", "forces_true", "forces_pred",
                             "free"]).to_pylist()
        for k, r in enumerate(data):
            if r["status"] != "ok":
                continue
            free = np.asarray(r["free"], dtype=bool)
            ft, fp = np.reshape(r["forces_true"], (-1, 3))[free], np.reshape(r["forces_pred"], (-1, 3))[free]
            e_abs[k] = abs(r["energy_pred"] - r["energy_true"]) / r["n_atoms"]
            f_abs[k], f_n[k] = np.abs(fp - ft).sum(), ft.size
            norms = np.linalg.norm(ft, axis=1) * np.linalg.norm(fp, axis=1)
            cos[k] = np.sum(np.einsum("ij,ij->i", ft, fp) / np.maximum(norms, 1e-8))
            n_atoms[k] = len(ft)
        ones = np.ones(n)
        return {"energy_per_atom_mae": (e_abs, ones), "forces_mae": (f_abs, f_n), "forces_cosine": (cos, n_atoms)}

    def metric_terms(self, table: pa.Table) -> dict[str, tuple[Any, Any]]:
        groups, terms = self._groups(table), self._row_terms(table)
        out = {}
        for prefix, mask in groups.items():
            for name, (total, numel) in terms.items():
                out[prefix + name] = (np.where(mask, total, 0.0), np.where(mask, numel, 0.0))
        ok = groups[""].astype(float)
        out["ood_fraction"] = (groups["ood_"].astype(float), ok)
        for a in AXES:
            if f"axes.{a}.ood." in groups:
                out[f"axes.{a}.ood_fraction"] = (groups[f"axes.{a}.ood."].astype(float), ok)
        return out

    def metrics(self, table: pa.Table) -> dict[str, Any]:
        groups, terms = self._groups(table), self._row_terms(table)
        n_ok = int(groups[""].sum())
        result: dict[str, Any] = {}

        def put(dotted: str, value: Any) -> None:
            *path, leaf = dotted.split(".")
            node = result
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = value

        for prefix, mask in groups.items():
            if ".bins." in prefix:  # name the bin before its numbers
                axis, b = prefix.split(".")[1], int(prefix.split(".")[3][3:])
                put(prefix + "range", bin_labels(getattr(self.options.bins, axis))[b])
            for name, (total, numel) in terms.items():
                denominator = float(numel[mask].sum())
                put(prefix + name, float(total[mask].sum()) / denominator if denominator > 0 else None)
            put(prefix + "n", int(mask.sum()))
            if prefix == "ood_":
                put("ood_fraction", int(mask.sum()) / n_ok if n_ok else None)
            if prefix.endswith(".ood."):
                put(prefix[:-len("ood.")] + "ood_fraction", int(mask.sum()) / n_ok if n_ok else None)
        for axis, reason in unavailable_axes(table).items():
            put(f"axes.{axis}", {"status": "n/a", "reason": reason})
        return result
