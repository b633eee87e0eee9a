"""Weights & Biases: every evaluation becomes a W&B run.

config = card + task protocol + dataset sha256; summary = the metrics (per split as
``splits/<split>/<metric>``) and their bootstrap intervals (``interval/<metric>`` = [lo, hi]);
a per-structure table (capped); the predictions Parquet as an
artifact; tags model/task/dataset. Offline mode is the default: the run is written under
``<out>/wandb/`` and ``wandb sync`` uploads it later. A W&B failure is reported and never costs
the local result, which is written before W&B is touched.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Literal

WandbMode = Literal["offline", "online", "disabled"]
TABLE_ROWS = 1000  # enough to browse and plot; the full predictions travel as the artifact
_TABLE_COLUMNS = ("id", "split", "status", "n_atoms", "energy_true", "energy_pred", "converged", "steps",
                  "seconds", "reason")


def log_run(record: dict[str, Any], *, card, task_config, results_dir: Path, mode: WandbMode = "offline",
            project: str | None = None) -> Path | None:
    """Log one result record as a W&B run; returns the run's local directory (None if disabled)."""
    if mode == "disabled":
        return None
    import pyarrow.parquet as pq
    import wandb

    from mlip_zoo.leaderboard.results import flatten_metrics

    model_dir = results_dir / record["model"]
    table = pq.read_table(model_dir / record["predictions"])
    columns = [c for c in _TABLE_COLUMNS if c in table.column_names]
    rows = table.select(columns).slice(0, TABLE_ROWS).to_pylist()
    run = wandb.init(
        project=project or os.environ.get("WANDB_PROJECT", "mlip-zoo"), mode=mode, dir=str(results_dir),
        name=f"{record['model']}/{record['task']}", job_type="eval", reinit="create_new",
        tags=[record["model"], record["task"], record["dataset"]["name"]],
        config={"model": card.model_dump(mode="json"), "task": task_config.model_dump(mode="json"),
                "dataset": record["dataset"], "provenance": record["provenance"]},
        settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))
    try:
        run.summary.update({k: v for k, v in flatten_metrics(record["metrics"], sep="/").items() if v is not None})
        run.summary.update({f"interval/{k}": v for k, v in flatten_metrics(record.get("intervals", {}), sep="/").items()
                            if v is not None})
        run.summary.update({"n_structures": record["n_structures"], "n_failed": record["n_failed"]})
        run.log({"predictions": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])})
        artifact = wandb.Artifact(f"{record['model']}-{record['task']}-predictions", type="predictions",
                                  metadata={"rows": table.num_rows, "dataset_sha256": record["dataset"]["sha256"]})
        artifact.add_file(str(model_dir / record["predictions"]))
        artifact.add_file(str(model_dir / f"{record['task']}.json"))
        run.log_artifact(artifact)
        return Path(run.dir).parent
    finally:
        run.finish()
        # finish() can return before wandb's service process has written the last records (the
        # summary) to the offline run file; shutting the service down waits for it, so the files
        # are complete when this returns (the tests read them right away, `wandb sync` may too).
        wandb.teardown()


# ---------------------------------------------------------------------------------------------
# Reading an offline run back (wandb ships no Python reader for its .wandb files).

_BLOCK = 32 * 1024
_HEADER = b":W&B"
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_run_file(path: str | Path) -> list:
    """The ``wandb_internal_pb2.Record`` messages of a ``run-*.wandb`` file.

    Layout: a 7-byte file header (``:W&B``, magic 0xBEE1, version 0), then LevelDB log records
    in 32 KiB blocks, each with a 7-byte header (crc32c, length, type); a message may be split
    over FIRST/MIDDLE/LAST pieces, and a block tail too short for a header is zero padding.
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if not data.startswith(_HEADER):
        raise ValueError(f"{path}: not a W&B run file (no :W&B header)")
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < 7:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            pending = payload
        elif kind == _FIRST:
            pending = payload
            continue
        elif kind == _MIDDLE:
            pending += payload
            continue
        elif kind == _LAST:
            pending += payload
        else:
            raise ValueError(f"{path}: corrupt record type {kind} at byte {pos}")
        message = wandb_internal_pb2.Record()
        message.ParseFromString(pending)
        records.append(message)
        pending = b""
    return records


def offline_summary(path: str | Path) -> dict[str, Any]:
    """The final summary values a run file records, decoded from JSON."""
    summary: dict[str, Any] = {}
    for rec in read_run_file(path):
        if rec.WhichOneof("record_type") == "summary":
            for item in rec.summary.update:
                key = "/".join([*item.nested_key]) if item.nested_key else item.key
                summary[key] = json.loads(item.value_json)
    return summary


def offline_config(path: str | Path) -> dict[str, Any]:
    """The run config a run file records (from its run record and config updates)."""
    config: dict[str, Any] = {}
    for rec in read_run_file(path):
        kind = rec.WhichOneof("record_type")
        items = rec.run.config.update if kind == "run" else rec.config.update if kind == "config" else []
        for item in items:
            config[item.key] = json.loads(item.value_json)
    return config
