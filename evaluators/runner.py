"""Running one model on one task: ``evaluate(model, task, opts) -> ResultRecord``.

1. ``make_plan`` resolves the card, the task's protocol, the dataset and the weights, once;
2. ``shards.cut`` streams the dataset into atom-balanced shards; finished ones are skipped;
3. the rest run on a worker (this process, or a Dask cluster from ``clusters``), each written
   atomically as Parquet with its checksum, so a killed run resumes where it stopped;
4. ``scoring.score`` turns the shards into metrics and intervals, shard by shard;
5. the ``ResultStore`` commits the record and its predictions file as one.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from ase import Atoms

from mlip_zoo.errors import DatasetError
from mlip_zoo.evaluators import shards
from mlip_zoo.evaluators.base import TaskConfig
from mlip_zoo.evaluators.clusters import Clusters, clusters_for, run_shards
from mlip_zoo.evaluators.plan import Plan, RunOptions, make_plan
from mlip_zoo.evaluators.record import ResultRecord
from mlip_zoo.evaluators.result import build_record
from mlip_zoo.evaluators.scoring import score
from mlip_zoo.evaluators.store import ROW_GROUP_ROWS, PredictionsWriter, ResultStore, writing
from mlip_zoo.evaluators.worker import run_shard
from mlip_zoo.zoo.card import ModelCard

__all__ = ["Clusters", "Plan", "RunOptions", "evaluate", "run_plan"]

Progress = Callable[[int, int], None]  # (ok, failed) structures just finished


def evaluate(model: str | ModelCard, task: str | TaskConfig, opts: RunOptions | None = None, *,
             clusters: Clusters | None = None, progress: Progress | None = None) -> ResultRecord:
    """Evaluate ``model`` on ``task``; returns the result record (also written to ``opts.out``).
    ``clusters``: the run's Dask clusters, kept between evaluations (default: made for this one)."""
    opts = opts or RunOptions()
    started, t0 = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    plan = make_plan(model, task, opts)
    with clusters_for(plan, opts, clusters) as where:
        return run_plan(plan, opts, where, progress, started=started, t0=t0)


def run_plan(plan: Plan, opts: RunOptions, clusters: Clusters | None, progress: Progress | None = None, *,
             started: dt.datetime | None = None, t0: float | None = None) -> ResultRecord:
    """Run a resolved plan: its shards in this process (``clusters`` None) or on Dask, then score
    and commit. Never builds clusters, never re-resolves or re-hashes anything the plan holds."""
    started = started or dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter() if t0 is None else t0
    report = progress or (lambda ok, failed: None)
    store, config = ResultStore(opts.out), plan.config
    work = shards.shard_dir(store, plan)
    with writing(work):
        work.mkdir(parents=True, exist_ok=True)
    with store.lock(plan.card.key, config.key):  # one evaluation at a time writes these files
        paths: list[Path] = []

        def pending() -> Iterator[tuple[list[Atoms], Path]]:
            for index, records in shards.cut(plan):
                path = work / f"shard-{index:05d}.parquet"
                paths.append(path)
                if shards.is_done(path):  # finished in an earlier run
                    status = pq.read_table(path, columns=["status"]).column("status").to_pylist()
                    failed = sum(s != "ok" for s in status)
                    report(len(status) - failed, failed)
                    continue
                yield records, path

        if clusters is None:
            for records, path in pending():
                report(*run_shard(plan, records, str(path)))
        else:
            run_shards(plan, pending(), clusters, report)

        predictions = store.model_dir(plan.card.key) / f".{config.key}.parquet.tmp"
        try:
            with writing(predictions), PredictionsWriter(predictions) as writer:
                # the shards, joined into one predictions file on the way
                scored = score(plan.evaluator, _batches(paths), config.bootstrap, each=writer.write)
            if scored is None:
                raise DatasetError(f"{plan.dataset.path}: no structures to evaluate (empty dataset or --limit 0)")
            from mlip_zoo.zoo.weights import sha256_of

            record = build_record(plan=plan, metrics=scored.metrics, intervals=scored.intervals,
                                  bootstrap=scored.bootstrap, n_structures=scored.n_structures,
                                  failures=scored.failures, predictions_sha256=sha256_of(predictions),
                                  references=scored.references, started=started,
                                  wall_time_s=time.perf_counter() - t0, n_workers=opts.workers,
                                  fitted=scored.fitted)
            store.commit(record, predictions)
        finally:
            predictions.unlink(missing_ok=True)
        return record


def _batches(paths: list[Path]) -> Iterator[pa.Table]:
    """The shards, read one at a time and joined into batches of at least ``ROW_GROUP_ROWS``
    rows: what ``reproduce`` reads of the predictions file (its row groups), so small shards
    (S2EF's 500 atoms are ~160 small frames) are scored as those are, not in thousands of tiny
    reduced tables whose overhead grew with the dataset."""
    pending: list[pa.Table] = []
    rows = 0
    for path in paths:
        pending.append(pq.read_table(path))
        rows += pending[-1].num_rows
        if rows >= ROW_GROUP_ROWS:
            yield pa.concat_tables(pending)
            pending, rows = [], 0
    if pending:
        yield pa.concat_tables(pending)
