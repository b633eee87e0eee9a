"""The one scoring path: predictions, one batch (a shard, a Parquet row group) at a time, become
metrics, their bootstrap intervals, the failed structures and the digest of the reference columns.

The runner scores the shards it just wrote; ``reproduce``, ``validate`` and the site score a
predictions file's row groups (the same shards, joined). Each batch is reduced by its task
(``Evaluator.reduce``: per-atom arrays become per-row numbers) before the next is read, so memory
holds one batch plus a few numbers per structure, whatever the size of the dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mlip_zoo.evaluators import uncertainty
from mlip_zoo.evaluators.base import BootstrapSettings, Evaluator
from mlip_zoo.evaluators.result import ReferenceDigest, reference_columns


# Reduced batches are joined into one chunk every so many: a shard's reduced rows are a few
# hundred bytes of numbers, but each small table costs kilobytes of Arrow and numpy objects,
# which would otherwise dominate the memory of a run of a million structures.
COMBINE_BATCHES = 256


@dataclass
class Score:
    metrics: dict[str, Any]
    intervals: dict[str, Any]
    bootstrap: dict[str, Any]
    n_structures: int
    failures: list[dict[str, Any]]  # {"id", "reason"} of every failed structure, in row order
    references: dict[str, Any]  # ReferenceDigest.record()
    fitted: dict[str, Any] | None = None  # Evaluator.fitted: constants fitted to the predictions


def reduce_all(evaluator: Evaluator, batches: Iterable[pa.Table],
               each: Callable[[pa.Table], None] | None = None) -> pa.Table | None:
    """The task's reduced rows of every batch, concatenated, with the constants its metrics fit to
    all of them (``Evaluator.fit``; None when there are no batches); ``each`` sees every batch
    first (the runner copies it into the predictions file)."""
    combined: list[pa.Table] = []  # one chunk per column each
    pending: list[pa.Table] = []
    for batch in batches:
        if each is not None:
            each(batch)
        pending.append(evaluator.reduce(batch))
        if len(pending) == COMBINE_BATCHES:
            combined.append(pa.concat_tables(pending, promote_options="none").combine_chunks())
            pending = []
    parts = combined + pending
    return evaluator.fit(pa.concat_tables(parts, promote_options="none").combine_chunks()) if parts else None


def score(evaluator: Evaluator, batches: Iterable[pa.Table], settings: BootstrapSettings | None = None,
          each: Callable[[pa.Table], None] | None = None) -> Score | None:
    """Score the predictions given as ``batches`` (None when they hold no row)."""
    digest = ReferenceDigest(reference_columns(evaluator))
    failures: list[dict[str, Any]] = []
    n = 0

    def account(batch: pa.Table) -> None:
        nonlocal n
        if each is not None:
            each(batch)
        digest.update(batch)
        n += batch.num_rows
        failed = batch.filter(pc.not_equal(batch.column("status"), "ok"))
        failures.extend(failed.select(["id", "reason"]).to_pylist())

    rows = reduce_all(evaluator, batches, account)
    if not n:
        return None
    metrics = evaluator.metrics(rows)
    intervals, bootstrap = uncertainty.intervals(evaluator, rows, metrics, settings or evaluator.config.bootstrap)
    return Score(metrics, intervals, bootstrap, n, failures, digest.record(), evaluator.fitted(rows))


def row_groups(path: Path, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """A predictions file's row groups (the run's shards), one at a time."""
    file = pq.ParquetFile(path)
    for i in range(file.num_row_groups):
        yield file.read_row_group(i, columns=columns)


def reduced_predictions(evaluator: Evaluator, path: Path) -> pa.Table:
    """A predictions file as its task's reduced rows, read a row group at a time: what rankings
    and paired comparisons resample."""
    rows = reduce_all(evaluator, row_groups(path))
    return rows if rows is not None else evaluator.reduce(pq.read_schema(path).empty_table())
