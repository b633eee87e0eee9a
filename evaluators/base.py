"""What a task is: a versioned protocol (``configs/tasks/<key>.yaml``), a way to turn a dataset
into per-structure prediction rows, and pure metrics over those rows.

Tasks register under the entry-point group ``mlip_zoo.evaluators`` (``module:Class``), so a
third-party package can add one. Metrics are pure functions of the predictions table, so any
number can be recomputed later from the Parquet file alone.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import yaml
from ase import Atoms
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlip_zoo.errors import ConfigError, UnknownTaskError
from mlip_zoo.zoo.card import ModelCard
from mlip_zoo.zoo.potential import Potential

# Per-row terms of ratio-of-sums metrics: dotted metric name -> (total, numel), one value per row;
# the metric is sum(total) / sum(numel) (see Evaluator.metric_terms).
Terms = dict[str, tuple[np.ndarray, np.ndarray]]

EVALUATOR_GROUP = "mlip_zoo.evaluators"


class MetricSpec(BaseModel):
    """A metric declared once: its unit and which way is better (the site reads these)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    label: str
    unit: str = ""
    higher_is_better: bool
    description: str = ""


class BootstrapSettings(BaseModel):
    """How the confidence interval of every metric is computed (see ``evaluators/uncertainty.py``):
    ``resamples`` draws of the structures with replacement, from ``seed``, within each value of the
    ``strata`` column when the predictions have it (so every split keeps its size)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    resamples: int = Field(1000, ge=100, le=100_000)
    seed: int = Field(0, ge=0)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    strata: str | None = "split"


class TaskConfig(BaseModel):
    """The versioned protocol of a task. Changing any constant means bumping ``version``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str
    version: str
    description: str
    evaluator: str  # entry-point name in mlip_zoo.evaluators
    dataset: str  # default dataset: a name under configs/datasets/ (folder) plus a file
    dataset_file: str
    headline: str
    metrics: dict[str, MetricSpec]
    splits: list[str] = []
    # Atoms per shard: balances work across workers, bounds memory. Like ``bootstrap`` it changes
    # no number, so it stays out of the fingerprint (the shards' work key names it itself).
    shard_atoms: int = 2000
    options: dict[str, Any] = {}
    # Intervals only: changing it changes no prediction, so it stays out of the fingerprint (and
    # shards stay valid); results record it in provenance instead.
    bootstrap: BootstrapSettings = BootstrapSettings()
    # Metric -> how far the model that labelled a dataset (its manifest's ``labelled_by``) may sit
    # from a perfect score on it, on any CPU (see evaluators/pipeline.py). A statement about
    # reproducibility, not about any number: it stays out of the fingerprint.
    label_tolerance: dict[str, float] = {}
    # The level of theory of the task's reference labels (eos: PBE). A model whose card names
    # another `functional` is still scored, with a visible note that the two differ.
    reference_functional: str | None = None

    @model_validator(mode="after")
    def _tolerances_name_metrics(self) -> TaskConfig:
        unknown = sorted(set(self.label_tolerance) - set(self.metrics))
        if unknown:
            raise ValueError(f"label_tolerance names metrics the task does not declare: {', '.join(unknown)}")
        return self

    def fingerprint(self) -> str:
        """What the task's numbers depend on: everything but how the work is cut and the intervals drawn."""
        data = self.model_dump(mode="json", exclude={"bootstrap", "shard_atoms", "label_tolerance", "reference_functional"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def tasks_dir() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("mlip_zoo.configs") / "tasks"))


def load_task_config(key: str) -> TaskConfig:
    path = tasks_dir() / f"{key}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in tasks_dir().glob("*.yaml"))
        hint = difflib.get_close_matches(key, known, n=2)
        raise UnknownTaskError(f"no task {key!r}" + (f"; did you mean {', '.join(hint)}?" if hint else "")
                                + f" Known tasks: {', '.join(known)}")
    try:
        data = yaml.safe_load(path.read_text())
        config = TaskConfig.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"{path}: invalid task config: {exc}") from None
    if config.key != key:
        raise ConfigError(f"{path}: key {config.key!r} must match the file name")
    return config


def task_keys() -> list[str]:
    return sorted(p.stem for p in tasks_dir().glob("*.yaml"))


class Evaluator(ABC):
    """A task. Subclasses set ``schema`` and implement ``run`` and ``metrics``."""

    schema: ClassVar[pa.Schema]

    def __init__(self, config: TaskConfig):
        self.config = config

    @property
    def key(self) -> str:
        return self.config.key

    @property
    def version(self) -> str:
        return self.config.version

    def work_key(self) -> str:
        """What the per-structure work depends on. Tasks that share it (IS2RE and IS2RS share
        their relaxations) share shards, so the work runs once."""
        return f"{self.key}:{self.config.fingerprint()}"

    def for_card(self, card: ModelCard) -> TaskConfig:
        """The protocol to run for this model (called once by the runner, before the work key and
        provenance): the config unchanged unless the task adapts to the card (ood-shift's
        ``reference: auto``). A changed config has its own fingerprint, recorded in the result."""
        return self.config

    def accepts(self, atoms: Atoms) -> str | None:
        """Why a dataset record cannot be used by this task (None when it can)."""
        return None

    @abstractmethod
    def run(self, potential: Potential, records: list[Atoms]) -> list[dict]:
        """One row per record, in order, matching ``schema``. A structure that fails gets
        ``status="failed"`` and a ``reason``; it never aborts the shard."""

    def checked_run(self, potential: Potential, records: list[Atoms]) -> list[dict]:
        """``run``, then a structure scored against a non-finite label of the dataset (a ``*_true``
        column: reference energy, forces, positions...) becomes a failed structure naming it: a NaN
        in the data costs that structure, never the run's metrics. Its row is the task's own row of
        a failed prediction (run again with a model that refuses), so validation, which re-derives
        failed rows that way, sees the same. The runner and validation both run tasks through here."""
        rows = self.run(potential, records)
        labels = [name for name in self.schema.names if name.endswith("_true")]
        bad = {i: why for i, row in enumerate(rows)
               if row.get("status") == "ok" and (why := _non_finite_label(row, labels))}
        if bad:
            redone = self.run(_Refusing(potential), [records[i] for i in bad])
            for (i, why), row in zip(bad.items(), redone, strict=True):
                rows[i] = {**row, "status": "failed", "reason": f"{why} (fix or drop this record of the dataset)"}
        return rows

    def reduce(self, table: pa.Table) -> pa.Table:
        """The per-row columns this task's metrics read, from one batch of predictions (a shard).
        Scoring (evaluators/scoring.py) reduces batch by batch and keeps only the reduced rows, so
        a task whose rows carry per-atom arrays (forces, positions) turns them into per-row numbers
        here and memory no longer grows with the atoms. Must keep ``id``, ``status`` and the
        bootstrap's strata column, and return a table that ``reduce`` and ``metrics`` accept again.
        Default: the rows as they are (tasks whose rows are already a few numbers)."""
        return table

    @abstractmethod
    def metrics(self, table: pa.Table) -> dict[str, Any]:
        """Pure function of the predictions rows (``reduce``d or not; only rows with status "ok" count)."""

    def provenance(self) -> dict[str, Any]:
        """Inputs besides the dataset that this task's numbers depend on (e.g. a cached file of
        training statistics: its path and sha256), recorded as ``provenance.task_inputs``."""
        return {}

    def metric_terms(self, table: pa.Table) -> Terms:
        """Optional fast path for the bootstrap. For metrics that are a ratio of sums over rows,
        ``value = sum(total) / sum(numel)``, the per-row ``(total, numel)`` arrays (length
        ``table.num_rows``; zeros for rows the metric ignores), keyed by the dotted name of the
        metric in ``metrics()`` (``"splits.id.energy_mae"``). The bootstrap then evaluates every
        resample at once instead of calling ``metrics()`` per resample, and checks the terms
        against ``metrics()``. Metrics left out are recomputed with ``metrics()``."""
        return {}


class _Refusing(Potential):
    """The model of a structure whose labels cannot be scored: every prediction raises."""

    def __init__(self, potential: Potential):
        super().__init__(potential.card)

    def _predict_one(self, atoms, stress: bool):
        raise ValueError("not scored: the dataset's reference label is not finite")


def _non_finite_label(row: dict[str, Any], labels: list[str]) -> str | None:
    """"reference energy is NaN", "reference forces hold infinite values"... or None."""
    for name in labels:
        value = row.get(name)
        if value is None:
            continue
        values = np.asarray(value, dtype=float).ravel()
        if np.isfinite(values).all():
            continue
        what = "NaN" if np.isnan(values).any() else "infinite"
        if np.ndim(value) == 0:
            return f"reference {name[:-5]} is {what}"
        return f"reference {name[:-5]} hold {'NaN' if what == 'NaN' else 'infinite values'}"
    return None


@functools.lru_cache(maxsize=1)
def _evaluator_entry_points() -> dict[str, Any]:  # scanning every installed distribution takes ~20 ms
    return {ep.name: ep for ep in entry_points(group=EVALUATOR_GROUP)}


def evaluator_for(task: str | TaskConfig) -> Evaluator:
    config = load_task_config(task) if isinstance(task, str) else task
    eps = _evaluator_entry_points()
    if config.evaluator not in eps:
        raise ConfigError(f"task {config.key}: evaluator {config.evaluator!r} is not registered under the "
                        f"{EVALUATOR_GROUP} entry points (known: {', '.join(sorted(eps))})")
    return eps[config.evaluator].load()(config)
