"""Evaluations as ``mlipzoo eval`` and ``mlipzoo run`` ask for them: one (model, task) pair with its
environment and its W&B copy (``evaluate_one``), a task's protocol adjusted for a run
(``with_options``, ``with_reference``), and a run config's blocks of models x tasks with their
errors collected (``run_plan``).

It lives in ``leaderboard/`` because a run hands each result to the W&B sink, and evaluators never
import leaderboard. Nothing here prints: progress, spinners and warnings go to a ``Reporter``,
silent by default, that the CLI implements with rich.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import yaml

from mlip_zoo.errors import ClusterError, ConfigError, DatasetError
from mlip_zoo.evaluators.base import TaskConfig, load_task_config
from mlip_zoo.evaluators.pipeline import label_check
from mlip_zoo.evaluators.plan import make_plan
from mlip_zoo.evaluators.record import ResultRecord
from mlip_zoo.evaluators.clusters import Clusters, clusters_for
from mlip_zoo.evaluators.runner import RunOptions, run_plan
from mlip_zoo.leaderboard.wandb_sink import log_run
from mlip_zoo.zoo.card import ModelCard, get_card
from mlip_zoo.zoo.envs import Environment, ensure_environment, environment_for, needs_environment
from mlip_zoo.zoo.weights import resolve_weights

log = logging.getLogger("mlip_zoo.runs")

ProgressUpdate = Callable[[int, int], None]  # (ok, failed) deltas, as evaluate's progress takes them


class Reporter:
    """What a run shows while it goes. These defaults show nothing (warnings go to the log)."""

    def quiet(self) -> AbstractContextManager[Any]:
        """Around model code, which may print banners to stdout ("CHGNet will run on cpu")."""
        return contextlib.nullcontext()

    def progress(self, total: int | None, label: str) -> AbstractContextManager[ProgressUpdate | None]:
        """While one pair evaluates; yields the per-structure progress callback."""
        return contextlib.nullcontext()

    def building_environment(self, card: ModelCard) -> AbstractContextManager[Callable[[str], None] | None]:
        """While a card's environment is built; yields the ``echo`` for the build's messages."""
        return contextlib.nullcontext()

    def environment_built(self, card: ModelCard, env: Environment) -> None:
        pass

    def warning(self, message: str) -> None:
        log.warning(message)

    def pair_failed(self, model: str, task: str, exc: Exception) -> None:
        pass


def with_reference(task: str, reference: Path) -> TaskConfig:
    """The task's protocol with the user's training set as its ``reference`` (recorded in the
    result's task-config hash and provenance)."""
    config = load_task_config(task)
    if "reference" not in config.options:
        raise ConfigError(f"task {task} has no training reference set; --reference is for ood-shift and ttr")
    if not reference.is_file():
        raise DatasetError(f"{reference}: reference (training) set not found (check --reference)")
    return config.model_copy(update={"options": {**config.options, "reference": str(reference.resolve())}})


def with_options(task: str, options: dict) -> TaskConfig:
    """The task's protocol with a run config's option overrides (e.g. diatomics `every: 2` to
    sub-sample the curves): recorded in the result's task-config hash, and results made under
    different options are never ranked together."""
    config = load_task_config(task)
    unknown = sorted(set(options) - set(config.options))
    if unknown:
        raise ConfigError(f"task {task} has no option(s) {', '.join(unknown)} (it has: {', '.join(config.options)})")
    return TaskConfig.model_validate({**config.model_dump(), "options": {**config.options, **options}})


def with_alignment(task: str | TaskConfig, on: bool) -> TaskConfig:
    """The task's protocol with its per-element energy alignment on (the calibration subset its
    config declares) or off (``--align/--no-align``; evaluators/oc20/alignment.py)."""
    config = load_task_config(task) if isinstance(task, str) else task
    declared = load_task_config(config.key).options.get("alignment")
    if "alignment" not in config.options:
        raise ConfigError(f"task {config.key} has no energy alignment; --align/--no-align are for oc20-s2ef and "
                          "oc20-is2re")
    if on and declared is None:
        raise ConfigError(f"configs/tasks/{config.key}.yaml declares no calibration subset (options.alignment); "
                          "set {fraction, max_rows, seed} there to align")
    return config.model_copy(update={"options": {**config.options, "alignment": declared if on else None}})


def evaluate_one(model: str, task: str | TaskConfig, opts: RunOptions, wandb_mode: str = "offline",
                 reporter: Reporter | None = None, clusters: Clusters | None = None) -> ResultRecord:
    """Evaluate, then hand the written result to the W&B sink (whose failure costs nothing local).
    ``task``: a key, or a task config adjusted for this run (``with_reference``, ``with_options``).
    The plan (card, protocol, dataset and weights with their sha256) is resolved once, here."""
    reporter = reporter or Reporter()
    card = get_card(model)
    _ensure_environment(card, opts.env, reporter)
    plan = make_plan(card, task, opts)
    total = plan.dataset.n
    if opts.limit is not None:
        total = min(total, opts.limit) if total is not None else opts.limit
    with clusters_for(plan, opts, clusters) as where, reporter.quiet(), \
            reporter.progress(total, f"{model} × {plan.config.key}") as update:
        record = run_plan(plan, opts, where, update)
    if wandb_mode != "disabled":
        try:
            with reporter.quiet():
                log_run(record, card=card, task_config=plan.config, results_dir=opts.out, mode=wandb_mode)
        except Exception as exc:  # the result is already on disk; W&B is a copy
            reporter.warning(f"W&B logging failed for {model} × {task} ({exc}); the local result is intact")
    return record


def _ensure_environment(card: ModelCard, mode: str, reporter: Reporter) -> None:
    """Build the model's own environment first, if it needs one (pip takes a while: the reporter
    shows it)."""
    if needs_environment(card, mode) and not environment_for(card).built:
        resolve_weights(card)  # no weights, no point: fail as the evaluation would, before pip runs
        with reporter.building_environment(card) as echo:
            env, _ = ensure_environment(card, echo=echo)
        reporter.environment_built(card, env)


def failed_checks(record: ResultRecord) -> str:
    """The pipeline checks a result fails (its model made the labels and missed them), or ""."""
    checked = label_check(load_task_config(record.task), record.model, record.dataset.labelled_by, record.metrics)
    return "; ".join(c.describe() for c in checked or () if not c.ok)


def default_run_config() -> Path:
    return Path(str(importlib.resources.files("mlip_zoo.configs") / "default.yaml"))


def read_run_config(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read run config: {exc}") from None


def run_config(config: dict, *, out: Path, device: str, workers: int, wandb_mode: str, env_mode: str,
               reporter: Reporter | None = None, scheduler: str | None = None, cluster: str = "local",
               cluster_config: Path | None = None) -> tuple[list[ResultRecord], list[dict]]:
    """Every model x task of the run config's ``runs`` blocks: (records, errors). One Dask cluster
    (and one per isolated environment) serves the whole run: local, ``scheduler``, or SLURM
    (``cluster``, ``cluster_config``). A failed pair becomes an error and the others still run;
    so does a result whose labeller missed its own labels. A lost cluster (ClusterError) ends the run."""
    reporter = reporter or Reporter()
    records, errors = [], []
    where = {"scheduler": scheduler, "cluster": cluster, "cluster_config": cluster_config}
    with Clusters(RunOptions(workers=workers, **where)) as clusters:
        for block in config.get("runs", []):
            for model in block["models"]:
                for task in block["tasks"]:
                    opts = RunOptions(out=out, device=device, workers=workers, limit=block.get("limit"), env=env_mode,
                                      **where)
                    try:
                        protocol = with_options(task, block["options"]) if block.get("options") else task
                        records.append(record := evaluate_one(model, protocol, opts, wandb_mode, reporter, clusters))
                        if failed := failed_checks(record):  # the labeller missed its own labels: a broken pipeline
                            errors.append({"model": model, "task": task, "error": "pipeline check failed: " + failed})
                    except ClusterError:  # the cluster is gone: every other pair would fail the same way
                        raise
                    except Exception as exc:  # keep going: one broken pair must not cost the others
                        errors.append({"model": model, "task": task, "error": f"{type(exc).__name__}: {exc}"})
                        reporter.pair_failed(model, task, exc)
    return records, errors
