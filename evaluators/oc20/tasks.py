"""OC20's three tasks, scored exactly as fairchem's v1 evaluator scores them (see metrics.py).

- S2EF: energy and forces of a given structure (trajectory frames).
- IS2RE: relaxed energy from the initial structure, by relaxing with the model.
- IS2RS: relaxed structure from the initial structure, from the same relaxations.

IS2RE and IS2RS produce identical per-structure rows (energy and positions of the relaxation), so
they share a work key and the runner relaxes each structure once for both.

A structure whose atoms are all fixed is a failed row in every task (reason ``NO_FREE_ATOMS``):
its forces and positions metrics are undefined (fairchem's EFwT raises on it).

Energies are compared like with like, and with the task option ``alignment`` also after a
per-element linear reference fitted on a calibration subset (``*_aligned`` metrics): see
alignment.py. Rows carry what that needs from the dataset (the label's ``energy_kind``, its
``energy_reference``, the atoms' ``numbers``) and from the card (``energy_pred_kind``), so every
number recomputes from the predictions file.
"""

from __future__ import annotations

import math
import json
import time
from abc import abstractmethod
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ase import Atoms
from pydantic import BaseModel, ConfigDict, Field

from mlip_zoo.evaluators import plots as plotting
from mlip_zoo.evaluators.base import REDUCED, Evaluator, TaskConfig, Terms
from mlip_zoo.evaluators.data import free_mask, record_id
from mlip_zoo.evaluators.oc20 import alignment
from mlip_zoo.evaluators.oc20 import metrics as m
from mlip_zoo.evaluators.oc20.alignment import Calibration
from mlip_zoo.evaluators.oc20.metrics import Metric
from mlip_zoo.evaluators.oc20.raw import S2EF_RAW_FORMAT
from mlip_zoo.evaluators.relax import RelaxProtocol, relax_many
from mlip_zoo.evaluators.uncertainty import Strata
from mlip_zoo.zoo.card import ModelCard
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
# What energies a row compares (alignment.py): the label's kind and reference, the model's kind,
# and the atoms' elements (the per-element alignment counts them).
_ENERGY = [pa.field("energy_kind", pa.string()), pa.field("energy_reference", pa.float64()),
           pa.field("energy_pred_kind", pa.string()), pa.field("numbers", pa.list_(pa.uint8()))]
_ENERGY_REFERENCES = ("energy_kind", "energy_reference", "numbers")


def _energy_columns(atoms: Atoms, potential: Potential) -> dict[str, Any]:
    return {"energy_kind": alignment.label_kind(atoms), "energy_reference": alignment.reference_of(atoms),
            "energy_pred_kind": alignment.TARGET_KIND[potential.card.energy_target],
            "numbers": atoms.numbers.astype(np.uint8).tolist()}


def _split(atoms: Atoms) -> str:
    return str(atoms.info.get("split", "all"))


def _failed(atoms: Atoms, index: int, reason: Exception | str, seconds: float) -> dict[str, Any]:
    if isinstance(reason, Exception):
        reason = f"{type(reason).__name__}: {reason}"
    return {"id": record_id(atoms, index), "split": _split(atoms), "n_atoms": len(atoms), "status": "failed",
            "reason": reason, "seconds": seconds}


# A structure whose atoms are all fixed has no forces or positions to score (fairchem's EFwT raises
# on it): a failed structure with this reason, never a silent energy-only score.
NO_FREE_ATOMS = f"no free atoms: {m.NO_FREE_ATOMS}"


def _numbers(table: pa.Table, column: str) -> np.ndarray:
    return np.asarray(table.column(column).to_numpy(), dtype=float)


def _spread(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Per-row values of the ok rows on every row of the table; failed rows add nothing."""
    out = np.zeros(ok.size, dtype=values.dtype)
    out[ok] = values
    return out


def _stacked(table: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray]:
    """A list column's values as one flat array, and each row's list length."""
    values = pc.list_flatten(table.column(column)).to_numpy()
    return values, pc.fill_null(pc.list_value_length(table.column(column)), 0).to_numpy().astype(np.int64)


def _check_lengths(table: pa.Table, expected: np.ndarray, **lengths: np.ndarray) -> None:
    """Every vector column holds 3 numbers per atom; a shard that does not is corrupt, not a model error."""
    for column, got in lengths.items():
        bad = np.flatnonzero(got != expected)
        if bad.size:
            row = int(bad[0])
            raise ValueError(f"predictions row {table.column('id')[row].as_py()!r}: {column} has {got[row]} "
                             f"values for {expected[row] // 3} atoms; the shard is corrupt, delete it and rerun")


def _like_with_like(terms: Terms, comparable: np.ndarray, energy_keys: tuple[str, ...]) -> Terms:
    """The raw energy metrics count only rows whose label is of the model's kind (a row without
    one is scored aligned only: alignment.py); the arrays of these keys share one numel, as before."""
    if comparable.all():
        return terms
    numel = comparable.astype(float)
    return {key: (total * numel, numel) if key in energy_keys else (total, numel_)
            for key, (total, numel_) in terms.items()}


def _by_split(table: pa.Table, terms: Terms, splits: list[str]) -> Terms:
    """Per-row terms of every reported metric, overall and per split (``splits.<s>.<metric>``,
    plus ``splits.<s>.n`` counting the split's ok rows), from the overall terms. A split's terms
    are the overall arrays and the split's rows: no copy per split, and a NaN in one split cannot
    reach another. Failed rows are in their split's rows (their terms are 0 and add nothing), so
    rows grouped by split (``group_strata``) make each split one contiguous block."""
    ok = pc.equal(table.column("status"), "ok").to_numpy(zero_copy_only=False)
    split = Strata.of(table.column("split"))
    out: Terms = dict(terms)
    counted = ok.astype(float)
    ones = np.broadcast_to(1.0, table.num_rows)  # a view: no memory per row
    for s in dict.fromkeys([*splits, *split.present(ok)]):
        if s == "all":
            continue
        rows = split.rows(s)
        for key, (total, numel) in terms.items():
            out[f"splits.{s}.{key}"] = (total, numel, rows)
        out[f"splits.{s}.n"] = (counted, ones, rows)
    return out


def _count(term: tuple[np.ndarray, np.ndarray, np.ndarray]) -> int:
    """The ok rows a split's ``n`` term counts."""
    counted, _, rows = term
    return int(counted[rows].sum())


def _report(terms: Terms, splits: list[str]) -> dict[str, Any]:
    """The nested metrics from (concatenated) terms: overall values, then ``splits`` with each
    split's values and row count; the task's own splits first, then the others sorted."""
    values = m.values(m.totals(terms))
    overall = [k for k in terms if not k.startswith("splits.")]
    seen = {k.removeprefix("splits.").rsplit(".", 1)[0] for k in terms if k.startswith("splits.") and k.endswith(".n")}
    out: dict[str, Any] = {k: values[k] for k in overall if k in values}
    out["splits"] = {s: {**{k: values.get(f"splits.{s}.{k}") for k in overall if f"splits.{s}.{k}" in terms},
                         "n": _count(terms[f"splits.{s}.n"])}
                     for s in [*[s for s in splits if s in seen], *sorted(seen - set(splits))]}
    return out


class _OC20Task(Evaluator):
    """Every OC20 metric is a ratio of per-row sums: one set of per-row terms, computed
    column-wise from the Arrow table, is the task's reduced rows (``reduce``: a total and a numel
    column per metric), gives the metrics and the bootstrap's fast path."""

    kept = ("id", "split", "status")  # the columns reduce keeps besides the terms
    group_strata = True  # every metric has per-split terms
    formats = (S2EF_RAW_FORMAT,)  # OC20's raw S2EF folders, read as published
    plot_columns = (*plotting.PARITY_COLUMNS, "energy_kind", "energy_reference", "energy_pred_kind")

    @abstractmethod
    def _ok_terms(self, ok: pa.Table) -> Terms:
        """Per-row terms of the task's metrics over a table of ok rows."""

    def _ok_columns(self, ok: pa.Table) -> tuple[Terms, dict[str, np.ndarray]]:
        """``_ok_terms``, and per-row values the alignment reads besides the energies (S2EF: whether
        the forces are within EFwT's threshold)."""
        return self._ok_terms(ok), {}

    @property
    def calibration(self) -> Calibration | None:
        """The declared calibration subset when the task aligns energies (option ``alignment``)."""
        return getattr(self.options, "alignment", None)

    def compatible(self, card: ModelCard, atoms: Atoms) -> str | None:
        if "alignment" not in type(self.options).model_fields:  # IS2RS scores no energy
            return None
        return alignment.refusal(atoms, card.energy_target, self.calibration is not None)

    def for_record(self, record) -> TaskConfig:
        """The alignment a result was scored with is the one its provenance records (none: off)."""
        if "alignment" not in type(self.options).model_fields:
            return self.config
        fitted = (record.provenance.fitted or {}).get("alignment")
        return self.config.model_copy(update={"options": {**self.config.options,
                                                          "alignment": fitted["calibration"] if fitted else None}})

    def fit(self, rows: pa.Table) -> pa.Table:
        rows = self.reduce(rows)
        return rows if self.calibration is None else alignment.with_fit(rows, self.calibration)

    def fitted(self, rows: pa.Table) -> dict[str, Any] | None:
        found = alignment.fitted(rows)
        return {"alignment": found} if found is not None else None

    def plots(self, table: pa.Table, metrics: dict[str, Any]) -> dict[str, Any] | None:
        """The generic plots, the energy parity against labels of the model's kind (a label of
        another kind, with no reference to convert it, has no point on it)."""
        if "energy_kind" not in table.column_names:
            return super().plots(table, metrics)
        labels, comparable = alignment.comparable_labels(table)
        like = table.set_column(table.schema.get_field_index("energy_true"), "energy_true", pa.array(labels))
        out = super().plots(like, metrics)
        if out is not None and not comparable.all():
            energy = plotting.parity_plots(like.filter(pa.array(comparable))).get("energy")
            out.pop("energy", None) if energy is None else out.update(energy=energy)
        return out

    def _alignment_inputs(self, table: pa.Table, ok: np.ndarray, extra: dict[str, np.ndarray]) -> dict[str, Any]:
        """The reduced columns the alignment fits and scores from, on every row: the label (of the
        model's kind where the dataset allows, else as it is), the prediction, the composition."""
        labels, comparable = alignment.comparable_labels(table)
        raw = np.asarray(table.column("energy_true").to_numpy(zero_copy_only=False), dtype=float)
        elements, counts = alignment.compositions(table.column("numbers"))
        columns = {"align:label": pa.array(np.where(comparable, labels, raw)),
                   "align:pred": table.column("energy_pred"), "align:elements": elements, "align:counts": counts}
        for name, values in extra.items():
            columns[f"align:{name}"] = pa.array(_spread(values, ok))
        return columns

    def reduce(self, table: pa.Table) -> pa.Table:
        """A ``<metric>:total`` column per metric and one column per distinct numel (a count of free
        atoms, of systems: metrics that share one keep sharing it, a third of the memory);
        the schema metadata maps each metric to its numel column."""
        if table.schema.metadata and REDUCED in table.schema.metadata:
            return table
        ok = pc.equal(table.column("status"), "ok").to_numpy(zero_copy_only=False)
        columns = {name: table.column(name) for name in self.kept}
        numels: dict[int, str] = {}  # id of a numel array -> its column
        owner = {}
        terms, extra = self._ok_columns(table.filter(ok))
        if self.calibration is not None:
            columns.update(self._alignment_inputs(table, ok, extra))
        for key, (total, numel) in terms.items():
            if id(numel) not in numels:
                numels[id(numel)] = f"numel{len(numels)}"
                columns[numels[id(numel)]] = pa.array(_spread(numel, ok))
            columns[f"{key}:total"], owner[key] = pa.array(_spread(total, ok)), numels[id(numel)]
        return pa.table(columns).replace_schema_metadata({REDUCED: json.dumps(owner).encode()})

    def metric_terms(self, table: pa.Table) -> Terms:
        rows = self.reduce(table)
        owner = json.loads(rows.schema.metadata[REDUCED])
        # the reduced columns hold 0 on failed rows; numels stay shared, as in reduce
        numels = {name: _numbers(rows, name) for name in dict.fromkeys(owner.values())}
        terms = {key: (_numbers(rows, f"{key}:total"), numels[name]) for key, name in owner.items()}
        if self.calibration is not None:  # the reference fitted once, on every row: fixed in resamples
            rows = self.fit(rows)
            terms.update(alignment.aligned_terms(rows, self.options.energy_threshold, mse=isinstance(self, IS2RE)))
        return _by_split(rows, terms, self.config.splits)

    def metrics(self, table: pa.Table) -> dict[str, Any]:
        return _report(self.metric_terms(table), self.config.splits)


class S2EFOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    energy_threshold: float = Field(gt=0)  # eV: EwT counts |error| below it
    force_threshold: float = Field(gt=0)  # eV/Å: EFwT's force bound
    alignment: Calibration | None = None  # the per-element alignment's calibration subset; None: off


class RelaxOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    relax: RelaxProtocol


class IS2REOptions(RelaxOptions):
    energy_threshold: float = Field(gt=0)  # eV: EwT counts |error| below it
    alignment: Calibration | None = None  # the per-element alignment's calibration subset; None: off


class S2EF(_OC20Task):
    # the prediction columns that come from the dataset, not the model (``id`` is always one)
    reference_columns = ("split", "n_atoms", "energy_true", "forces_true", "free", *_ENERGY_REFERENCES)
    Options = S2EFOptions
    schema = pa.schema([*_COMMON, pa.field("energy_true", pa.float64()), pa.field("energy_pred", pa.float64()),
                        pa.field("forces_true", _VEC), pa.field("forces_pred", _VEC),
                        pa.field("free", pa.list_(pa.bool_())), *_ENERGY])

    def accepts(self, atoms: Atoms) -> str | None:
        if atoms.calc is None or "energy" not in atoms.calc.results or "forces" not in atoms.calc.results:
            return "S2EF needs reference energy and forces on every record"
        return alignment.check_record(atoms)

    def figures(self, data: dict[str, dict[str, Any]]) -> list[plotting.Figure]:
        return [plotting.ENERGY_PARITY, plotting.FORCES_PARITY]

    def run(self, potential: Potential, records: list[Atoms]) -> list[dict]:
        rows = []
        for i, atoms in enumerate(records):
            t0 = time.perf_counter()
            try:
                # the model first: a structure it cannot take (no atoms at all, NaN positions) says so
                (pred,) = potential.predict([atoms], properties=("energy", "forces"))
                free = free_mask(atoms)
                if not free.any():
                    rows.append(_failed(atoms, i, NO_FREE_ATOMS, time.perf_counter() - t0))
                    continue
                rows.append({
                    "id": record_id(atoms, i), "split": _split(atoms), "n_atoms": len(atoms), "status": "ok",
                    "reason": None, "seconds": time.perf_counter() - t0,
                    "energy_true": float(atoms.calc.results["energy"]), "energy_pred": pred.energy,
                    "forces_true": np.asarray(atoms.calc.results["forces"], float).ravel().tolist(),
                    "forces_pred": pred.forces.ravel().tolist(), "free": free.tolist(),
                    **_energy_columns(atoms, potential)})
            except Exception as exc:  # recorded, never fatal: one structure must not sink a run
                rows.append(_failed(atoms, i, exc, time.perf_counter() - t0))
        return rows

    def _ok_terms(self, ok: pa.Table) -> Terms:
        return self._ok_columns(ok)[0]

    def _ok_columns(self, ok: pa.Table) -> tuple[Terms, dict[str, np.ndarray]]:
        forces_true, n_true = _stacked(ok, "forces_true")
        forces_pred, n_pred = _stacked(ok, "forces_pred")
        free, n_atoms = _stacked(ok, "free")
        _check_lengths(ok, 3 * n_atoms, forces_true=n_true, forces_pred=n_pred)
        labels, comparable = alignment.comparable_labels(ok)
        predicted = _numbers(ok, "energy_pred")
        terms, worst = m.s2ef_terms_and_worst(np.where(comparable, labels, predicted), predicted,
                                              forces_true.reshape(-1, 3), forces_pred.reshape(-1, 3), free,
                                              np.repeat(np.arange(ok.num_rows), n_atoms),
                                              energy_threshold=self.options.energy_threshold,
                                              force_threshold=self.options.force_threshold)
        return _like_with_like(terms, comparable, ("energy_mae", "energy_forces_within_threshold")), \
            {"within": worst < self.options.force_threshold}


class _Relaxation(_OC20Task):
    """Relax each initial structure with the model; rows carry energy and positions."""
    # the prediction columns that come from the dataset, not the model (``id`` is always one)
    reference_columns = ("split", "n_atoms", "energy_true", "pos_true", "cell", "pbc", "free", *_ENERGY_REFERENCES)

    schema = pa.schema([*_COMMON, pa.field("energy_true", pa.float64()), pa.field("energy_pred", pa.float64()),
                        pa.field("pos_true", _VEC), pa.field("pos_pred", _VEC), pa.field("cell", _VEC),
                        pa.field("pbc", pa.list_(pa.bool_())), pa.field("free", pa.list_(pa.bool_())),
                        pa.field("converged", pa.bool_()), pa.field("steps", pa.int32()), *_ENERGY])

    Options = RelaxOptions

    @property
    def protocol(self) -> RelaxProtocol:
        return self.options.relax

    def work_key(self) -> str:
        # Same dataset + same relaxation protocol = same rows, whichever of IS2RE/IS2RS asks.
        # "rows 2": structures without free atoms are failed rows (older shards scored them);
        # "rows 3": rows carry the energy kinds and the atoms' numbers.
        return "oc20-relax:rows 3:" + self.protocol.model_dump_json()

    def accepts(self, atoms: Atoms) -> str | None:
        if "y_relaxed" not in atoms.info or "pos_relaxed" not in atoms.arrays:
            return "IS2RE/IS2RS need info['y_relaxed'] and the per-atom array 'pos_relaxed'"
        return alignment.check_record(atoms)

    def run(self, potential: Potential, records: list[Atoms]) -> list[dict]:
        rows = []
        for i, (atoms, (result, seconds)) in enumerate(zip(records, relax_many(records, potential, self.protocol),
                                                             strict=True)):
            if isinstance(result, Exception):
                rows.append(_failed(atoms, i, result, seconds))
                continue
            free = free_mask(atoms)
            if not free.any():  # IS2RE fails it too: the two tasks share these rows
                rows.append(_failed(atoms, i, NO_FREE_ATOMS, seconds))
                continue
            rows.append({
                "id": record_id(atoms, i), "split": _split(atoms), "n_atoms": len(atoms), "status": "ok",
                "reason": None, "seconds": seconds,
                "energy_true": float(atoms.info["y_relaxed"]), "energy_pred": result.energy,
                "pos_true": np.asarray(atoms.arrays["pos_relaxed"], float).ravel().tolist(),
                "pos_pred": result.atoms.get_positions().ravel().tolist(),
                "cell": np.asarray(atoms.cell, float).ravel().tolist(), "pbc": [bool(p) for p in atoms.pbc],
                "free": free.tolist(), "converged": result.converged, "steps": result.steps,
                **_energy_columns(atoms, potential)})
        return rows


class IS2RE(_Relaxation):
    kept = ("id", "split", "status", "converged")
    Options = IS2REOptions

    def figures(self, data: dict[str, dict[str, Any]]) -> list[plotting.Figure]:
        return [plotting.Figure("energy", "Relaxed energy parity", unit="eV")]

    def _ok_terms(self, ok: pa.Table) -> Terms:
        labels, comparable = alignment.comparable_labels(ok)
        predicted = _numbers(ok, "energy_pred")
        terms = m.is2re_terms(np.where(comparable, labels, predicted), predicted,
                              energy_threshold=self.options.energy_threshold)
        return _like_with_like(terms, comparable, tuple(terms))

    def metric_terms(self, table: pa.Table) -> Terms:
        rows = self.reduce(table)
        ok = pc.equal(rows.column("status"), "ok").to_numpy(zero_copy_only=False).astype(float)
        converged = pc.fill_null(rows.column("converged"), False).to_numpy(zero_copy_only=False).astype(float)
        return {**super().metric_terms(rows), "converged_fraction": (converged * ok, ok)}

    def metrics(self, table: pa.Table) -> dict[str, Any]:
        terms = self.metric_terms(table)
        converged, ok = terms.pop("converged_fraction")
        return {**_report(terms, self.config.splits),
                "converged_fraction": Metric(float(converged.sum()), int(ok.sum())).value}


class IS2RS(_Relaxation):
    plot_columns = (*_OC20Task.plot_columns, "pos_true", "pos_pred", "cell")

    def plots(self, table: pa.Table, metrics: dict[str, Any]) -> dict[str, Any] | None:
        """The generic plots, and the ADwT curve: per system the mean minimum-image distance over
        free atoms, every axis periodic (as ADwT scores it)."""
        out = super().plots(table, metrics)
        ok = plotting.ok_rows(table)
        if ok:
            dists = []
            for r in ok:
                free = np.asarray(r["free"], bool)
                diff = (np.reshape(r["pos_pred"], (-1, 3)) - np.reshape(r["pos_true"], (-1, 3)))[free]
                d = np.linalg.norm(m.min_image(diff, np.reshape(r["cell"], (3, 3))), axis=1)
                dists.append(float(d.mean()) if d.size else math.nan)
            thresholds, frac = m.adwt_curve(dists)
            out["adwt"] = {"x": plotting.rounded(thresholds), "y": plotting.rounded(frac)}
        return out

    def figures(self, data: dict[str, dict[str, Any]]) -> list[plotting.Figure]:
        return [plotting.Figure("adwt", "Distance within threshold")]
    def _ok_terms(self, ok: pa.Table) -> Terms:
        pos_true, n_true = _stacked(ok, "pos_true")
        pos_pred, n_pred = _stacked(ok, "pos_pred")
        free, n_atoms = _stacked(ok, "free")
        _check_lengths(ok, 3 * n_atoms, pos_true=n_true, pos_pred=n_pred)
        # the pbc column is not read: fairchem scores ADwT with every axis periodic (see is2rs_terms)
        cells = _stacked(ok, "cell")[0].reshape(-1, 3, 3)
        return m.is2rs_terms(pos_true.reshape(-1, 3), pos_pred.reshape(-1, 3), cells, free,
                             np.repeat(np.arange(ok.num_rows), n_atoms))
