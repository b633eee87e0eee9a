"""The one scoring path: predictions, one batch (a shard, a Parquet row group) at a time, become
metrics, their bootstrap intervals, the failed structures and the digest of the reference columns.

The runner scores the shards it just wrote; ``reproduce``, ``validate`` and the site score a
predictions file's row groups (the same shards, joined). Each batch is reduced by its task
(``Evaluator.reduce``: per-atom arrays become per-row numbers) before the next is read, so memory
holds one batch plus a few numbers per structure, whatever the size of the dataset.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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
    """The task's reduced rows of every batch, joined (one chunk per column), with the constants
    its metrics fit to all of them (``Evaluator.fit``; None when there are no batches); ``each``
    sees every batch first (the runner copies it into the predictions file). A task that sets
    ``Evaluator.group_strata`` gets its rows grouped by bootstrap stratum (stable), so that each
    split's per-row terms are one contiguous block the bootstrap reads without a copy."""
    combined: list[pa.Table] = []  # one chunk per column each
    pending: list[pa.Table] = []
    for batch in batches:
        if each is not None:
            each(batch)
        pending.append(evaluator.reduce(batch))
        del batch
        release_free_memory()  # the batch's per-atom arrays: else the reduced rows pin their pages
        if len(pending) == COMBINE_BATCHES:
            combined.append(_join(pending))
    if not combined and not pending:
        return None
    combined += pending
    pending.clear()
    strata = evaluator.config.bootstrap.strata if evaluator.group_strata else None
    return evaluator.fit(_join(combined, strata))


def _join(tables: list[pa.Table], strata: str | None = None) -> pa.Table:
    """The tables (emptied from the list) as one with one chunk per column, rows grouped by the
    ``strata`` column's values when given. Joined a column at a time, each column's sources let go
    as it is copied: the join holds one column twice, never the table."""
    schema = tables[0].schema
    columns = {name: [t.column(name) for t in tables] for name in schema.names}
    tables.clear()
    order = None
    if strata in columns:
        codes = pc.dictionary_encode(pa.chunked_array([c for part in columns[strata] for c in part.chunks],
                                                      schema.field(strata).type)).combine_chunks().indices
        positions = np.argsort(codes.to_numpy(zero_copy_only=False), kind="stable")
        order = None if (np.diff(positions) == 1).all() else pa.array(positions)  # None: grouped already
    arrays = []
    for name in schema.names:
        whole = pa.chunked_array([c for part in columns.pop(name) for c in part.chunks], schema.field(name).type)
        arrays.append(whole.combine_chunks() if order is None else whole.take(order).combine_chunks())
        del whole
        release_free_memory()  # the column's sources: thousands of small blocks, hand them back
    return pa.Table.from_arrays(arrays, schema=schema)


def _trimmer() -> Callable[[], object] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # glibc
    except (OSError, AttributeError):
        return None


_TRIM = _trimmer()
if _TRIM is not None and "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
    # Arrow's buffers from glibc too, so that release_free_memory returns them as well: Arrow's
    # default pool (mimalloc) keeps what each batch frees and hands little of it back, which left
    # `reproduce` of 200k S2EF frames 10-20 MiB higher (benchmarks/RESULTS.md). The environment
    # variable, when set, still chooses.
    pa.set_memory_pool(pa.system_memory_pool())


def release_free_memory() -> None:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim``, as Dask's workers
    do; nothing elsewhere). Reduced rows are many small numpy blocks between the freed transients
    of the batches they came from; glibc keeps those pages mapped, so without this the resident
    memory of scoring grew with the number of batches (~20 MB at 200k S2EF frames), and a joined
    table cost its size twice."""
    if _TRIM is not None:
        _TRIM(0)


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
