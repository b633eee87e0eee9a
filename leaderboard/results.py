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
from mlip_zoo.evaluators.base import evaluator_for, load_task_config
from mlip_zoo.evaluators.result import RESULT_SCHEMA_VERSION

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
    missing = [k for k in REQUIRED if k not in record]
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

    @property
    def ok(self) -> bool:
        return not self.differences


def flatten_metrics(metrics: dict[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """``{"splits": {"id": {"energy_mae": x}}}`` -> ``{"splits.id.energy_mae": x}``."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flatten_metrics(value, sep, f"{prefix}{key}{sep}"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-15)
    return a == b


def recompute(path: Path) -> Comparison:
    """Recompute a result's metrics from its predictions file with this mlip-zoo's evaluator."""
    import pyarrow.parquet as pq

    record = read_result(path)
    try:
        config = load_task_config(record["task"])
    except MlipZooError as exc:
        raise ResultError(f"{path}: {exc}") from None
    if config.version != record["task_version"]:
        raise ResultError(f"{path}: result is for {record['task']} version {record['task_version']}, this mlip-zoo "
                          f"implements version {config.version}; rerun the evaluation")
    try:
        table = pq.read_table(predictions_path(path, record))
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) on a damaged file
        raise ResultError(f"{path}: predictions file cannot be read ({exc})") from None
    evaluator = evaluator_for(config)
    missing = [c for c in evaluator.schema.names if c not in table.column_names]
    if missing:
        raise ResultError(f"{path}: predictions lack column(s) {', '.join(missing)}")
    if table.num_rows != record["n_structures"]:
        raise ResultError(f"{path}: claims {record['n_structures']} structures, predictions hold {table.num_rows}")
    try:
        recomputed = json.loads(json.dumps(evaluator.metrics(table)))
    except (ConfigError, DatasetError, ValueError, KeyError, TypeError) as exc:
        raise ResultError(f"{path}: metrics cannot be recomputed from the predictions ({exc})") from None
    claimed, again = flatten_metrics(record["metrics"]), flatten_metrics(recomputed)
    diffs = [(k, claimed.get(k), again.get(k)) for k in sorted(set(claimed) | set(again))
             if not _same(claimed.get(k), again.get(k))]
    return Comparison(path, record["metrics"], recomputed, diffs)
