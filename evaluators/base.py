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
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, get_args

import numpy as np
import pyarrow as pa
import yaml
from ase import Atoms
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlip_zoo.errors import ConfigError, UnknownTaskError
from mlip_zoo.plugins import Plugins
from mlip_zoo.evaluators import plots as plotting
from mlip_zoo.zoo.card import ModelCard
from mlip_zoo.zoo.potential import Potential

if TYPE_CHECKING:
    from mlip_zoo.evaluators.data import DatasetFormat

# Per-row terms of ratio-of-sums metrics: dotted metric name -> (total, numel), one value per row;
# the metric is sum(total) / sum(numel) (see Evaluator.metric_terms). A third element, ``rows``
# (ascending row indices, or a slice when they are one block), restricts a metric to those rows:
# sum(total[rows]) / sum(numel[rows]), so per-split metrics share the overall arrays.
Terms = dict[str, tuple[np.ndarray | slice, ...]]

EVALUATOR_GROUP = "mlip_zoo.evaluators"
# Schema metadata key of a table that is already a task's reduced rows (``Evaluator.reduce``).
REDUCED = b"mlipzoo.reduced"


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


class Tolerance(BaseModel):
    """How far a re-run prediction may sit from a submitted one, element by element:
    ``|a - b| <= abs + rel * max(|a|, |b|)`` (``math.isclose``'s rule: symmetric in a and b)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    abs: float = Field(0.0, ge=0)
    rel: float = Field(0.0, ge=0, lt=1)

    def allows(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.abs(a - b) <= self.abs + self.rel * np.maximum(np.abs(a), np.abs(b))


class VerifySettings(BaseModel):
    """How ``mlipzoo verify`` re-runs a sample of a result (leaderboard/verify.py): ``sample``
    structures by default, no new structure started after ``budget_s`` seconds, and each
    prediction column named in ``tolerance`` compared with it (other columns, such as timings or
    optimizer step counts, are not predictions a re-run must reproduce)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sample: int = Field(5, ge=1)
    budget_s: float = Field(600.0, gt=0)
    tolerance: dict[str, Tolerance]


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
    # How a sample of a submitted result is re-run and compared (``mlipzoo verify``); None: the
    # task cannot be verified from a sample (ttr trains on the whole test set). Like
    # ``label_tolerance``, a statement about reproducibility: it stays out of the fingerprint.
    verify: VerifySettings | None = None
    # How far (relative) a metric recomputed from the predictions by `validate`/`reproduce` may sit
    # from the claimed one: another CPU sums in another order (SIMD width, BLAS threads). Sums of
    # errors agree to ~1e-15; a task whose metrics come out of a fit, which amplifies round-off by
    # its conditioning, states its own bound and why. A statement about reproducibility, like
    # ``label_tolerance``: it stays out of the fingerprint.
    recompute_rel_tol: float = Field(1e-12, gt=0, le=1e-6)

    @model_validator(mode="after")
    def _tolerances_name_metrics(self) -> TaskConfig:
        unknown = sorted(set(self.label_tolerance) - set(self.metrics))
        if unknown:
            raise ValueError(f"label_tolerance names metrics the task does not declare: {', '.join(unknown)}")
        return self

    def fingerprint(self) -> str:
        """What the task's numbers depend on: everything but how the work is cut and the intervals drawn."""
        data = self.model_dump(mode="json", exclude={"bootstrap", "shard_atoms", "label_tolerance",
                                                        "reference_functional", "verify", "recompute_rel_tol"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def tasks_dir() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("mlip_zoo.configs") / "tasks"))


def load_task_config(key: str) -> TaskConfig:
    """The task's config from configs/tasks/<key>.yaml, its ``options`` checked against the task's
    ``Options`` model (an unknown or mistyped key is refused here, naming the file)."""
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
    if (cls := _evaluator_class(config, required=False)) is not None:  # unregistered: evaluator_for says so
        cls.check_options(config, where=str(path))
        _check_verify(cls, config, str(path))
    return config


def _check_verify(cls: type[Evaluator], config: TaskConfig, where: str) -> None:
    """``verify.tolerance`` names prediction columns of the task (not its reference columns)."""
    named = set(config.verify.tolerance) if config.verify else set()
    wrong = sorted(named - set(cls.schema.names)) + sorted(named & {"id", *cls.reference_columns})
    if wrong:
        raise ConfigError(f"{where}: verify.tolerance names {', '.join(wrong)}, which are not prediction columns of "
                          f"task {config.key} (its columns: {', '.join(cls.schema.names)})")


def task_keys() -> list[str]:
    return sorted(p.stem for p in tasks_dir().glob("*.yaml"))


class NoOptions(BaseModel):
    """The options of a task that has none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Evaluator(ABC):
    """A task. Subclasses set ``schema`` (and ``Options`` when the task has options) and
    implement ``run`` and ``metrics``."""

    schema: ClassVar[pa.Schema]
    # The prediction columns that come from the dataset, not from the model (``id`` is always one):
    # what a result's ``references`` digest covers and what validation re-derives from the dataset.
    reference_columns: ClassVar[tuple[str, ...]] = ()
    # The typed ``options`` of the task's config (pydantic, extra="forbid"): checked when the
    # config is loaded, read as ``self.options.<name>``. ``config.options`` keeps the raw mapping,
    # which is what the task's fingerprint hashes.
    Options: ClassVar[type[BaseModel]] = NoOptions
    # Dataset layouts this task's package reads beyond the generic ones (evaluators/data.py
    # consults every registered task's, so a dataset path is read the same whatever the task).
    formats: ClassVar[tuple[DatasetFormat, ...]] = ()
    # Columns of the predictions file ``plots`` reads (the site reads no others).
    plot_columns: ClassVar[tuple[str, ...]] = plotting.PARITY_COLUMNS

    def __init__(self, config: TaskConfig):
        self.config = config
        self.options = self.check_options(config)

    @classmethod
    def check_options(cls, config: TaskConfig, where: str | None = None) -> BaseModel:
        """``config.options`` as this task's ``Options``; ConfigError naming ``where`` (the file,
        else the task), each bad key and the keys known at its level."""
        try:
            return cls.Options.model_validate(config.options)
        except ValidationError as exc:
            problems = "; ".join(_option_problem(cls.Options, err) for err in exc.errors())
            raise ConfigError(f"{where or f'task {config.key}'}: invalid options: {problems}") from None

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

    def compatible(self, card: ModelCard, atoms: Atoms) -> str | None:
        """Why this model's outputs cannot be scored against this record like with like (OC20: an
        adsorption label and a total-energy model, with nothing to convert one into the other);
        None when they can. Checked on the driver for every record before it reaches a model, so
        a refused pairing costs no model time."""
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

    def plots(self, table: pa.Table, metrics: dict[str, Any]) -> dict[str, Any] | None:
        """Plot data of one model's result for the task page (JSON, drawn by the site's site.js),
        from its predictions (``plot_columns`` of them) and metrics: by default mean seconds per
        structure, and energy and force parity from the columns present. None: nothing to plot."""
        return plotting.parity_plots(table)

    def figures(self, data: dict[str, dict[str, Any]]) -> list[plotting.Figure]:
        """The figures of the task page, given every model's ``plots`` data (model -> data); the
        speed-vs-accuracy figure every page has is not listed."""
        return []

    # Group the reduced rows by bootstrap stratum (scoring.reduce_all): for tasks whose terms are
    # per split, so the bootstrap reads each split as a block instead of copying the terms in
    # split order. Resamples draw the same rows either way (draws go stratum by stratum, in row
    # order within one); only the order of floating-point sums changes.
    group_strata: bool = False

    def fit(self, rows: pa.Table) -> pa.Table:
        """Constants some metrics fit to the predictions as a whole (OC20: the per-element energy
        alignment), computed once from every (reduced) row and carried in the returned table's
        schema metadata, which resamples keep (``take``): the bootstrap treats them as fixed.
        Scoring calls it after ``reduce``; ``metrics`` fits on its own when given rows without.
        Default: none, the rows as they are."""
        return rows

    def fitted(self, rows: pa.Table) -> dict[str, Any] | None:
        """What a result records of ``fit``'s constants (``provenance.fitted``), which
        ``mlipzoo reproduce`` recomputes and compares. None: nothing was fitted."""
        return None

    def for_record(self, record: Any) -> TaskConfig:
        """The protocol a result (a ResultRecord) was scored with, for recomputing it: the config,
        with any setting the result records in its provenance (OC20: the alignment, which a run
        may switch off)."""
        return self.config

    def provenance(self) -> dict[str, Any]:
        """Inputs besides the dataset that this task's numbers depend on (e.g. a cached file of
        training statistics: its path and sha256), recorded as ``provenance.task_inputs``."""
        return {}

    def resampler(self, table: pa.Table) -> Callable[[np.ndarray], dict[str, np.ndarray]] | None:
        """Optional fast path for the bootstrap of metrics that are not ratios of sums: a function
        from a count matrix ``(resamples, rows)`` (how often each row is drawn; ``uint8`` from the
        bootstrap, float in its checks) to each metric's value in every resample (dotted keys; NaN
        where undefined), computed with matrix products (``uncertainty.weighted_sums``) rather
        than one ``metrics()`` call per resample. Checked against ``metrics()``."""
        return None

    def metric_terms(self, table: pa.Table) -> Terms:
        """Optional fast path for the bootstrap. For metrics that are a ratio of sums over rows,
        ``value = sum(total) / sum(numel)``, the per-row ``(total, numel)`` arrays (length
        ``table.num_rows``; zeros for rows the metric ignores), keyed by the dotted name of the
        metric in ``metrics()`` (``"splits.id.energy_mae"``); a metric over some rows only (a
        split) may add those rows' ascending indices, ``(total, numel, rows)``, and share the arrays
        of the metric over every row (the bootstrap is fastest when such row sets do not overlap).
        The bootstrap then evaluates every
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


def _option_problem(model: type[BaseModel], error: Any) -> str:
    """One pydantic error as ``options.<dotted key>: <why>``, with the keys known where it sits."""
    loc = [str(part) for part in error["loc"]]
    where = ".".join(["options", *loc])
    if error["type"] != "extra_forbidden":
        return f"{where}: {error['msg']}"
    known = _known_keys(model, loc[:-1])
    return f"{where}: unknown key" + (f" (known: {', '.join(known)})" if known else " (this task takes no options)")


def _known_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    """The field names of the pydantic model found by following ``path`` (field names, and the
    class names pydantic puts in the path of a union's member) from ``model``."""
    models = [model]
    for name in path:
        if named := [m for m in models if m.__name__ == name]:
            models = named
            continue
        fields = [f for m in models if (f := m.model_fields.get(name)) is not None]
        models = [c for f in fields for c in (f.annotation, *get_args(f.annotation))
                  if isinstance(c, type) and issubclass(c, BaseModel)]
        if not models:
            return []
    return list(models[0].model_fields) if len(models) == 1 else []


TASK_CLASSES = Plugins(EVALUATOR_GROUP, "evaluator", ConfigError)


def _evaluator_class(config: TaskConfig, required: bool = True) -> type[Evaluator] | None:
    if config.evaluator not in TASK_CLASSES.all():
        if not required:
            return None
        raise ConfigError(f"task {config.key}: evaluator {config.evaluator!r} is not registered under the "
                          f"{EVALUATOR_GROUP} entry points (known: {', '.join(sorted(TASK_CLASSES.all()))})")
    return TASK_CLASSES.load(config.evaluator)


@functools.lru_cache(maxsize=1)
def dataset_formats() -> tuple[DatasetFormat, ...]:
    """The dataset formats every registered task declares, in entry-point order, each once."""
    found: dict[str, DatasetFormat] = {}
    for name, ep in TASK_CLASSES.all().items():
        try:
            cls = ep.load()
        except Exception as exc:  # a broken third-party task must not stop every dataset being read
            warnings.warn(f"evaluator {name!r} ({ep.value}) cannot be imported, so its dataset formats are not "
                          f"read: {type(exc).__name__}: {exc}", stacklevel=2)
            continue
        for fmt in getattr(cls, "formats", ()):
            found.setdefault(fmt.name, fmt)
    return tuple(found.values())


def evaluator_for(task: str | TaskConfig) -> Evaluator:
    """The task's evaluator; its options are checked here too, so a run config's overrides are
    refused on the driver, before any work."""
    config = load_task_config(task) if isinstance(task, str) else task
    return _evaluator_class(config)(config)
