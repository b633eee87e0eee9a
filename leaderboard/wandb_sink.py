"""Weights & Biases: every evaluation becomes a W&B run.

config = card + task protocol + dataset sha256; summary = the metrics (per split as
``splits/<split>/<metric>``) and their bootstrap intervals (``interval/<metric>`` = [lo, hi]);
a per-structure table (its first TABLE_ROWS rows, stated as ``table_rows``); the predictions Parquet as an
artifact; tags model/task/dataset. Offline mode is the default: the run is written under
``<out>/wandb/`` and ``wandb sync`` uploads it later. A W&B failure is reported and never costs
the local result, which is written before W&B is touched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from mlip_zoo.evaluators.record import ResultRecord

WandbMode = Literal["offline", "online", "disabled"]
TABLE_ROWS = 1000  # enough to browse and plot; the full predictions travel as the artifact
_TABLE_COLUMNS = ("id", "split", "status", "n_atoms", "energy_true", "energy_pred", "converged", "steps",
                  "seconds", "reason")


def log_run(record: ResultRecord, *, card, task_config, results_dir: Path, mode: WandbMode = "offline",
            project: str | None = None) -> Path | None:
    """Log one result record as a W&B run; returns the run's local directory (None if disabled).
    ``task_config`` is logged as the model ran it (``Evaluator.for_card``: ood-shift's ``auto``
    reference resolved), so the run's config matches the record's task-config hash."""
    if mode == "disabled":
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq
    import wandb

    from mlip_zoo.evaluators.base import evaluator_for
    from mlip_zoo.evaluators.result import flatten_metrics
    from mlip_zoo.evaluators.store import ResultStore, predictions_file

    path = ResultStore(results_dir).result_path(record.model, record.task)
    predictions = predictions_file(path, record)
    file = pq.ParquetFile(predictions)
    columns = [c for c in _TABLE_COLUMNS if c in file.schema_arrow.names]
    rows = pa.Table.from_batches([next(file.iter_batches(batch_size=TABLE_ROWS, columns=columns))]).to_pylist() \
        if file.metadata.num_rows else []  # the first rows only: never the whole file in memory
    config = evaluator_for(task_config).for_card(card)
    run = wandb.init(
        project=project or os.environ.get("WANDB_PROJECT", "mlip-zoo"), mode=mode, dir=str(results_dir),
        name=f"{record.model}/{record.task}", job_type="eval", reinit="create_new",
        tags=[record.model, record.task, record.dataset.name],
        config={"model": card.model_dump(mode="json"), "task": config.model_dump(mode="json"),
                "dataset": record.dataset.model_dump(mode="json"),
                "provenance": record.provenance.model_dump(mode="json")},
        settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))
    try:
        run.summary.update({k: v for k, v in flatten_metrics(record.metrics, sep="/").items() if v is not None})
        run.summary.update({f"interval/{k}": v for k, v in flatten_metrics(record.intervals, sep="/").items()
                            if v is not None})
        run.summary.update({"n_structures": record.n_structures, "n_failed": record.n_failed,
                            "table_rows": len(rows)})
        run.log({"predictions": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])})
        artifact = wandb.Artifact(f"{record.model}-{record.task}-predictions", type="predictions",
                                  metadata={"rows": file.metadata.num_rows, "dataset_sha256": record.dataset.sha256})
        artifact.add_file(str(predictions), name=record.predictions)
        artifact.add_file(str(path))
        run.log_artifact(artifact)
        return Path(run.dir).parent
    finally:
        run.finish()
        # finish() can return before wandb's service process has written the last records (the
        # summary) to the offline run file; shutting the service down waits for it, so the files
        # are complete when this returns (the tests read them right away, `wandb sync` may too).
        wandb.teardown()
