"""Reading and checking result files: the results store the site and PR validation stand on.

Nothing here imports, executes or unpickles anything from a submission: results are JSON, the
predictions are Parquet (plain columnar data), and metrics are recomputed with *our* evaluator
for the task the result names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mlip_zoo.errors import ConfigError, DatasetError, MlipZooError
from mlip_zoo.evaluators import uncertainty
from mlip_zoo.evaluators.base import Evaluator, TaskConfig, evaluator_for, load_task_config
from mlip_zoo.evaluators.result import RESULT_SCHEMA_VERSION, flatten_metrics

REQUIRED = ("schema_version", "model", "task", "task_version", "dataset", "metrics", "n_structures", "n_failed",
            "failures", "predictions", "provenance")
REQUIRED_PROVENANCE = ("card_sha256", "weights_sha256", "task_config_sha256", "code_version", "packages",
                       "hardware", "started", "wall_time_s", "device")
REL_TOL = 1e-12  # recomputation runs the same code on the same numbers; allow only round-off


class ResultError(MlipZooError, ValueError):
    """A result file is malformed, incomplete, or its numbers do not follow from its predictions."""


def result_files(results_dir: Path) -> list[Path]:
    """``<results>/<model>/<task>.json``, skipping shard and W&B folders."""
    return sorted(p for p in results_dir.glob("*/*.json") if not p.parent.name.startswith((".", "wandb")))


def read_result(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultError(f"{path}: not a readable result file ({exc})") from None
    if not isinstance(record, dict):
        raise ResultError(f"{path}: a result file is a JSON object")
    version = record.get("schema_version")
    if isinstance(version, int) and version > RESULT_SCHEMA_VERSION:
        raise ResultError(f"{path}: written by a newer mlip-zoo (result schema {version}; this one reads up to "
                          f"{RESULT_SCHEMA_VERSION}); upgrade mlip-zoo to read it")
    required = REQUIRED + (("intervals",) if isinstance(version, int) and version >= 2 else ())
    missing = [k for k in required if k not in record]
    if missing:
        raise ResultError(f"{path}: missing field(s) {', '.join(missing)}")
    missing = [k for k in REQUIRED_PROVENANCE if k not in record["provenance"]]
    if missing:
        raise ResultError(f"{path}: provenance is incomplete: missing {', '.join(missing)}")
    return record


def predictions_path(path: Path, record: dict[str, Any]) -> Path:
    rel = PurePosixPath(str(record["predictions"]))
    if rel.is_absolute() or ".." in rel.parts:
        raise ResultError(f"{path}: predictions must be a file beside the result, got {record['predictions']!r}")
    target = path.parent / rel
    if not target.is_file():
        raise ResultError(f"{path}: predictions file {target} is missing; every number must be recomputable")
    return target


@dataclass
class Comparison:
    path: Path
    claimed: dict[str, Any]
    recomputed: dict[str, Any]
    differences: list[tuple[str, Any, Any]] = field(default_factory=list)
    intervals: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.differences


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-15)
    if isinstance(a, list) and isinstance(b, list):  # an interval [lo, hi]
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _differences(claimed: dict[str, Any], again: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    claimed, again = flatten_metrics(claimed), flatten_metrics(again)
    return [(prefix + k, claimed.get(k), again.get(k)) for k in sorted(set(claimed) | set(again))
            if not _same(claimed.get(k), again.get(k))]


def task_of(path: Path, record: dict[str, Any]) -> TaskConfig:
    """The current protocol of the task a result names; an older task version is an error."""
    try:
        config = load_task_config(record["task"])
    except MlipZooError as exc:
        raise ResultError(f"{path}: {exc}") from None
    if config.version != record["task_version"]:
        raise ResultError(f"{path}: result is for {record['task']} version {record['task_version']}, this mlip-zoo "
                          f"implements version {config.version}; rerun the evaluation")
    return config


def read_predictions(path: Path, record: dict[str, Any], evaluator: Evaluator):
    """The predictions table a result points to, checked against the task's columns and the
    result's structure count."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(predictions_path(path, record))
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) on a damaged file
        raise ResultError(f"{path}: predictions file cannot be read ({exc})") from None
    missing = [c for c in evaluator.schema.names if c not in table.column_names]
    if missing:
        raise ResultError(f"{path}: predictions lack column(s) {', '.join(missing)}")
    if table.num_rows != record["n_structures"]:
        raise ResultError(f"{path}: claims {record['n_structures']} structures, predictions hold {table.num_rows}")
    return table


def recompute(path: Path) -> Comparison:
    """Recompute a result's metrics and their bootstrap intervals (with the task's current
    bootstrap settings) from its predictions file with this mlip-zoo's evaluator."""
    record = read_result(path)
    if not isinstance(record["schema_version"], int) or record["schema_version"] < 2:
        raise ResultError(f"{path}: result schema {record['schema_version']} predates confidence intervals "
                          f"(schema {RESULT_SCHEMA_VERSION}); rerun the evaluation to get them")
    config = task_of(path, record)
    evaluator = evaluator_for(config)
    table = read_predictions(path, record, evaluator)
    try:
        metrics = evaluator.metrics(table)
        intervals, bootstrap = uncertainty.intervals(evaluator, table, metrics, config.bootstrap)
        recomputed = json.loads(json.dumps(metrics))
    except (ConfigError, DatasetError, ValueError, KeyError, TypeError) as exc:
        raise ResultError(f"{path}: metrics cannot be recomputed from the predictions ({exc})") from None
    diffs = (_differences(record["metrics"], recomputed)
             + _differences(record["intervals"], intervals, "intervals.")
             + _differences(record["provenance"].get("bootstrap") or {}, bootstrap, "provenance.bootstrap."))
    return Comparison(path, record["metrics"], recomputed, diffs, intervals)


def read_with_predictions(path: Path):
    """``(record, task config, evaluator, predictions table)`` of a result file."""
    record = read_result(path)
    config = task_of(path, record)
    evaluator = evaluator_for(config)
    return record, config, evaluator, read_predictions(path, record, evaluator)


def compare(path_a: Path, path_b: Path) -> tuple[dict[str, Any], uncertainty.PairedComparison]:
    """Paired bootstrap of ``A - B`` for every metric of two results of one task on one dataset,
    on the structures both evaluated (matched by id). Returns (facts, comparison)."""
    record_a, config, evaluator, table_a = read_with_predictions(path_a)
    record_b, _, _, table_b = read_with_predictions(path_b)
    if record_a["task"] != record_b["task"]:
        raise ResultError(f"{path_a} is a {record_a['task']} result and {path_b} a {record_b['task']} result; "
                          "compare two results of the same task")
    if record_a["dataset"]["sha256"] != record_b["dataset"]["sha256"]:
        raise ResultError(f"{path_a} and {path_b} were evaluated on different datasets "
                          f"({record_a['dataset']['name']}/{record_a['dataset']['file']} vs "
                          f"{record_b['dataset']['name']}/{record_b['dataset']['file']}); their numbers are not paired")
    try:
        comparison = uncertainty.paired(evaluator, table_a, table_b, config.bootstrap)
    except DatasetError as exc:
        raise ResultError(f"{path_a} vs {path_b}: {exc}") from None
    facts = {"a": str(path_a), "b": str(path_b), "model_a": record_a["model"], "model_b": record_b["model"],
             "task": config.key, "task_version": config.version, "dataset": record_a["dataset"]["name"],
             "n_common": comparison.n, "n_a": table_a.num_rows, "n_b": table_b.num_rows,
             "bootstrap": uncertainty.record_of(config.bootstrap)}
    return facts, comparison
