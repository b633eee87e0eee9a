"""How sure is each number: a seeded bootstrap over structures, for any task.

A resample draws the rows (structures) of a predictions table with replacement and recomputes
the task's own ``Evaluator.metrics`` on them, so classification metrics (F1, DAF, precision),
threshold metrics (EFwT, EwT, ADwT) and nested per-split or per-subset metrics are all covered
by the same code. Rows are drawn within each value of the task's ``bootstrap.strata`` column
(``split`` by default) when the table has it, so every split keeps its size and its interval is
the bootstrap of that split alone. A metric's interval is the percentile interval of its
resampled values (2.5 and 97.5 percentiles at 95 %).

Which values get an interval:

- real numbers (``float``, numpy floats) do;
- integers are counts (``n``, TP/FP/TN/FN): they describe the sample, not the model, and get
  ``None``; so do booleans, strings and a point value that is ``None`` or NaN;
- a resample in which a metric is undefined (NaN/None, e.g. no stable material drawn, or
  ``metrics()`` raising ``ValueError``/``ArithmeticError`` on a degenerate draw) is left out of
  that metric's percentiles and counted in ``undefined``; when fewer than half the resamples are
  defined the interval is ``None``;
- constants a task fits to all its rows (``Evaluator.fit``: OC20's per-element energy alignment)
  are fitted once, on the full table, and held fixed in every resample: the intervals do not
  include the uncertainty of the fit itself.

Resamples are count vectors: ``W[b, i]`` is how often row ``i`` is drawn in resample ``b`` (a byte
a cell, so a chunk holds many resamples; ``weighted_sums`` multiplies it in row blocks). One
seed gives the same ``W`` for every table with the same number of rows and strata, so two
models' predictions on the same structures (aligned by ``id``) share their resamples: that is
the paired bootstrap of their difference, and of their ranks. A model compared with itself
differs by exactly 0 in every resample.

Speed: a task whose metrics are ratios of sums over rows can declare per-row terms
(``Evaluator.metric_terms``); then all resamples are ``(W @ total) / (W @ numel)`` at once, checked
against ``metrics()`` on the full table and on one resample. A task whose metrics are other
functions of weighted sums (F1, DAF, RMSE, R2, a most-stable-N subset from one sort and cumulative
counts) can give ``Evaluator.resampler``: every resample of a chunk from its count matrix, checked
the same way. Other metrics call ``metrics()`` once per resample.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlip_zoo.errors import DatasetError, MetricError
from mlip_zoo.evaluators.base import BootstrapSettings, Evaluator, Terms
from mlip_zoo.evaluators.result import flatten_metrics

COUNT_CELLS = 8_000_000  # resamples x rows per count matrix (a byte each, 8 MB): WBM gets 31 a chunk
PRODUCT_CELLS = 131_072  # of a count matrix taken as floats at a time by weighted_sums (1 MB)
TERMS_RTOL = 1e-9  # fast path vs metrics(): the same sums in another order


# ---------------------------------------------------------------------------------------------
# Values and intervals


def is_estimate(value: Any) -> bool:
    """A value that gets an interval: a finite real number that is not a count (see module doc)."""
    if isinstance(value, (bool, np.bool_, int, np.integer)) or not isinstance(value, (float, np.floating)):
        return False
    return math.isfinite(value)


def _number(value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return math.nan
    return float(value)


def percentile_interval(values: np.ndarray, confidence: float) -> list[float] | None:
    """``[lo, hi]`` percentiles of the defined (finite) values; None if fewer than half are defined."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size == 0 or 2 * finite.size < values.size:
        return None
    tail = 50.0 * (1.0 - confidence)
    lo, hi = np.percentile(finite, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


# ---------------------------------------------------------------------------------------------
# Resamples


@dataclass(frozen=True, eq=False)
class Strata:
    """A label column (a split, a stratum) as one small integer a row: ``codes[i]`` indexes
    ``names``, the distinct labels in sorted order (a null reads "None"). A byte a row however
    long the labels, where an array of Python strings costs eight and a list of them more."""

    codes: np.ndarray
    names: tuple[str, ...]

    @classmethod
    def of(cls, column: pa.ChunkedArray | pa.Array) -> Strata:
        encoded = pc.dictionary_encode(pc.fill_null(pc.cast(column, pa.string()), "None"))
        encoded = encoded.combine_chunks() if isinstance(encoded, pa.ChunkedArray) else encoded
        found = encoded.dictionary.to_pylist()
        order = sorted(range(len(found)), key=found.__getitem__)
        rank = np.empty(len(found), dtype=np.uint8 if len(found) <= 256 else np.int32)
        rank[order] = np.arange(len(found))
        return cls(rank[encoded.indices.to_numpy(zero_copy_only=False)], tuple(found[i] for i in order))

    def __len__(self) -> int:
        return self.codes.size

    def rows(self, name: str) -> np.ndarray | slice:
        """The rows labelled ``name``: a slice when they are one block (rows grouped by stratum,
        see ``Evaluator.group_strata``: no index array a row), else their indices."""
        if name not in self.names:
            return slice(0, 0)
        found = np.flatnonzero(self.codes == self.names.index(name))
        return slice(int(found[0]), int(found[-1]) + 1) if found[-1] - found[0] + 1 == found.size else found

    def present(self, mask: np.ndarray) -> list[str]:
        """The labels of the rows ``mask`` selects, sorted."""
        return [self.names[c] for c in np.unique(self.codes[mask])]


def strata_labels(table: pa.Table, settings: BootstrapSettings) -> Strata | None:
    """The stratum of each row, or None (one stratum) when the table has no such column."""
    if settings.strata is None or settings.strata not in table.column_names:
        return None
    return Strata.of(table.column(settings.strata))


SHARED_CELLS = 4_000_000  # resamples x rows up to which the count matrices are kept for reuse (4 MB)
_shared: dict[tuple, list[np.ndarray]] = {}


def resample_counts(n: int, settings: BootstrapSettings, strata: Strata | None = None
                    ) -> Iterator[np.ndarray]:
    """``_draw_counts``, drawn once per (rows, strata, settings) when small: every model ranked on
    the same structures reuses the same resamples (common random numbers) instead of drawing
    them again. Callers must not modify the matrices."""
    if n * settings.resamples > SHARED_CELLS:
        yield from _draw_counts(n, settings, strata)
        return
    key = (n, settings.seed, settings.resamples, None if strata is None else (strata.names, strata.codes.tobytes()))
    if key not in _shared:
        if len(_shared) >= 16:
            _shared.clear()
        _shared[key] = list(_draw_counts(n, settings, strata))
        for counts in _shared[key]:
            counts.setflags(write=False)
    yield from _shared[key]


def _draw_counts(n: int, settings: BootstrapSettings, strata: Strata | None = None
                 ) -> Iterator[np.ndarray]:
    """Count matrices (``uint8``) of up to 128 resamples each (``settings.resamples`` rows in all),
    shape ``(chunk, n)``. Resample ``b`` draws, for each stratum in sorted order, as many rows as
    the stratum has, uniformly with replacement from it; the draws depend only on the seed, ``n``
    and the strata, never on the values."""
    rng = np.random.default_rng(settings.seed)
    if strata is None:
        groups = [slice(0, n)]
    else:
        if len(strata) != n:
            raise ValueError(f"{len(strata)} strata labels for {n} rows")
        groups = [strata.rows(s) for s in strata.names]
    chunk = max(1, min(128, COUNT_CELLS // max(n, 1)))
    for start in range(0, settings.resamples, chunk):
        size = min(chunk, settings.resamples - start)
        counts = np.zeros((size, n), dtype=np.uint8)
        for b in range(size):
            for group in groups:  # disjoint: each stratum's rows are set once
                m = group.stop - group.start if isinstance(group, slice) else group.size
                drawn = np.bincount(rng.integers(0, m, m), minlength=m)  # the j-th row of the stratum, drawn[j] times
                if m > 255 and drawn.max() > 255:  # odds below 1e-500 (a binomial(m, 1/m) count)
                    raise MetricError(f"a resample drew one row {drawn.max()} times: more than a count matrix "
                                      "holds (255); report this with the seed")
                counts[b, group] = drawn
        yield counts
        del counts  # one chunk alive at a time: not the last one while the next is drawn


def weighted_sums(counts: np.ndarray, columns: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``[counts @ c for c in columns]`` for a count matrix ``(resamples, rows)`` of any dtype and
    float columns ``(rows,)`` or ``(rows, k)``, a block of rows at a time: each block of counts is
    converted to floats once, and it and the columns' block stay in cache for every product, so
    the columns are read once per chunk of resamples (not once per resample, as a product of a
    few-resample matrix reads them) and no float copy of the whole matrix is made."""
    resamples, n = counts.shape
    out = [np.zeros((resamples,) + np.shape(c)[1:]) for c in columns]
    step = max(1, PRODUCT_CELLS // max(resamples, 1))
    for start in range(0, n, step):
        block = np.asarray(counts[:, start:start + step], dtype=float)
        for total, column in zip(out, columns, strict=True):
            total += block @ column[start:start + step]
    return out


def _rows_of(counts: np.ndarray) -> np.ndarray:
    """The row indices one count vector draws (sorted; metrics do not depend on row order)."""
    return np.repeat(np.arange(counts.size), counts.astype(np.int64))


def sorted_median(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``np.median`` of every resample's multiset, given ``values`` in ascending order and
    ``counts[b, j]``, how often resample ``b`` draws ``values[j]``: the one or two middle values
    found from cumulative counts, no sort per resample. NaN for a resample that draws nothing
    (``values`` must hold no NaN)."""
    counts = np.asarray(counts, dtype=float)
    total = counts.sum(axis=1)
    if values.size == 0:
        return np.full(len(counts), np.nan)
    cum = np.cumsum(counts, axis=1)
    lo = (cum <= ((total - 1) // 2)[:, None]).sum(axis=1)  # the value at position (N-1)//2 of the sorted draw
    hi = (cum <= (total // 2)[:, None]).sum(axis=1)  # ... and at N//2 (the same one when N is odd)
    lo, hi = np.minimum(lo, values.size - 1), np.minimum(hi, values.size - 1)
    return np.where(total > 0, (values[lo] + values[hi]) / 2, np.nan)


# ---------------------------------------------------------------------------------------------
# Replicates: each metric's value in every resample


@dataclass
class Replicates:
    """Point values (flattened, dotted keys) and each estimate's value in every resample."""

    point: dict[str, Any]
    values: dict[str, np.ndarray]
    settings: BootstrapSettings

    def interval(self, key: str) -> list[float] | None:
        return percentile_interval(self.values[key], self.settings.confidence) if key in self.values else None

    def undefined(self) -> dict[str, int]:
        return {k: int(np.count_nonzero(~np.isfinite(v))) for k, v in self.values.items()
                if not np.isfinite(v).all()}


def _metrics_or_undefined(evaluator: Evaluator, table: pa.Table) -> dict[str, Any]:
    try:
        return flatten_metrics(evaluator.metrics(table))
    except (ValueError, ArithmeticError):  # a degenerate draw (a class absent): undefined here
        return {}


def _close(a: float, b: float) -> bool:
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.isfinite(a) == math.isfinite(b)
    return math.isclose(a, b, rel_tol=TERMS_RTOL, abs_tol=1e-12)


def _ratio(total: np.ndarray, numel: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(numel > 0, total / np.where(numel > 0, numel, 1.0), np.nan)


def _checked_terms(evaluator: Evaluator, terms: Terms, n_rows: int, point: dict[str, Any], keys: list[str]
                   ) -> Terms:
    """The evaluator's fast-path terms for ``keys``, checked against the full-table metrics, each
    as ``(total, numel, rows)`` (``rows`` a slice of every row when the task gave none)."""
    out = {}
    every = slice(None)
    for key, (total, numel, *rows) in terms.items():
        if key not in keys:
            continue
        total, numel = np.asarray(total, dtype=float), np.asarray(numel, dtype=float)
        if total.shape != (n_rows,) or numel.shape != (n_rows,):
            raise MetricError(f"task {evaluator.key}: metric_terms[{key!r}] must be two arrays of "
                              f"{n_rows} values (one per row), got {total.shape} and {numel.shape}")
        rows = every if not rows else rows[0] if isinstance(rows[0], slice) else np.asarray(rows[0], dtype=np.int64)
        whole = float(_ratio(np.array([total[rows].sum()]), np.array([numel[rows].sum()]))[0])
        if not _close(whole, _number(point[key])):
            raise MetricError(f"task {evaluator.key}: metric_terms gives {key} = {whole!r} but metrics() gives "
                              f"{point[key]!r}; fix the task's metric_terms (or drop the key from it)")
        out[key] = (total, numel, rows)
    return out


def _in_blocks(terms: Terms, n_rows: int) -> tuple[np.ndarray | None, Terms]:
    """A row order in which every term's rows are one contiguous block, and the terms in that
    order with their rows as slices: a split's weighted sums are then products of views, with no
    copy per split. (None, terms with slices) when every row set is contiguous already (a run over
    one split); (None, terms) unchanged when row sets overlap (each chunk then gathers its rows)."""
    blocks = list({id(rows): rows for _, _, rows in terms.values() if not isinstance(rows, slice)}.values())
    if all(b.size == 0 or b[-1] - b[0] + 1 == b.size for b in blocks):  # contiguous already (one split...)
        where = {id(b): slice(int(b[0]), int(b[-1]) + 1) if b.size else slice(0, 0) for b in blocks}
        return None, {key: (total, numel, rows if isinstance(rows, slice) else where[id(rows)])
                      for key, (total, numel, rows) in terms.items()}
    placed = np.concatenate(blocks)
    seen = np.bincount(placed, minlength=n_rows)
    if seen.max(initial=0) > 1:
        return None, terms
    order = np.concatenate([placed, np.flatnonzero(seen == 0)])
    starts = np.cumsum([0] + [len(b) for b in blocks])
    where = {id(b): slice(int(starts[i]), int(starts[i + 1])) for i, b in enumerate(blocks)}
    moved: dict[int, np.ndarray] = {}  # arrays shared between terms stay shared

    def reordered(values: np.ndarray) -> np.ndarray:
        if id(values) not in moved:
            moved[id(values)] = values[order]
        return moved[id(values)]

    out = {key: (reordered(total), reordered(numel), rows if isinstance(rows, slice) else where[id(rows)])
           for key, (total, numel, rows) in terms.items()}
    return order, out


def _by_rows(fast: Terms) -> list[tuple[np.ndarray | slice, list[np.ndarray], dict[str, tuple[int, int]]]]:
    """The fast-path terms grouped by the rows they sum over: per row set, the distinct arrays its
    metrics read (an array shared by several metrics once) and, per metric, the positions of its
    total and numel among them. One pass over a chunk's counts then gives every sum of a row set."""
    groups: dict[Any, tuple[np.ndarray | slice, dict[int, tuple[int, np.ndarray]], dict[str, tuple[int, int]]]] = {}
    for key, (total, numel, rows) in fast.items():
        where = (rows.start, rows.stop, rows.step) if isinstance(rows, slice) else id(rows)
        _, arrays, pairs = groups.setdefault(where, (rows, {}, {}))
        for array in (total, numel):
            arrays.setdefault(id(array), (len(arrays), array))
        pairs[key] = (arrays[id(total)][0], arrays[id(numel)][0])
    return [(rows, [a for _, a in arrays.values()], pairs) for rows, arrays, pairs in groups.values()]


def replicates(evaluator: Evaluator, table: pa.Table, settings: BootstrapSettings | None = None, *,
               strata: Strata | None = None, keys: Sequence[str] | None = None,
               metrics: dict[str, Any] | None = None) -> Replicates:
    """Every estimate's value in each resample of ``table``'s rows (``keys`` limits which).

    ``table`` is the predictions or their reduced rows (evaluators/scoring.py); ``strata``
    overrides the table's own strata column (paired comparisons pass one table's labels to both,
    so both draw the same rows); ``metrics`` is ``evaluator.metrics(table)`` when the caller has
    it already."""
    settings = settings or evaluator.config.bootstrap
    table = evaluator.fit(table)  # constants fitted to all the rows (OC20's alignment) stay fixed in resamples
    n_rows = table.num_rows
    if strata is None:
        strata = strata_labels(table, settings)
    point = flatten_metrics(evaluator.metrics(table) if metrics is None else metrics)
    wanted = [k for k, v in point.items() if is_estimate(v) and (keys is None or k in keys)]
    fast = _checked_terms(evaluator, evaluator.metric_terms(table), n_rows, point, wanted)
    vector = evaluator.resampler(table)  # every resample of a chunk at once, from its count matrix
    slow = [k for k in wanted if k not in fast]
    chunks = resample_counts(n_rows, settings, strata)
    first = next(chunks, None)
    if first is not None:  # the fast paths must also agree with metrics() under duplication
        _check_paths(evaluator, table, fast, vector, slow, point, first[0])
    order, fast = _in_blocks(fast, n_rows)
    products = _by_rows(fast)
    values = {k: np.full(settings.resamples, np.nan) for k in wanted}
    start = 0
    chunks = itertools.chain(() if first is None else (first,), chunks)
    del first  # one count matrix alive at a time (see _draw_counts)
    for counts in chunks:
        weights = counts if order is None or not fast else counts[:, order]
        for rows, arrays, pairs in products:
            sums = weighted_sums(weights[:, rows], [a[rows] for a in arrays])
            for key, (total, numel) in pairs.items():
                values[key][start:start + len(counts)] = _ratio(sums[total], sums[numel])
        rest = slow
        if vector is not None and slow:
            chunk = vector(counts)
            for key in list(chunk):
                if key in values and key not in fast:
                    values[key][start:start + len(counts)] = chunk[key]
            rest = [k for k in slow if k not in chunk]
        if rest:
            for j, row in enumerate(counts):
                drawn = _metrics_or_undefined(evaluator, table.take(_rows_of(row)))
                for key in rest:
                    values[key][start + j] = _number(drawn.get(key))
        start += len(counts)
        counts = weights = sums = None  # this chunk goes before the next is drawn
    return Replicates(point, values, settings)


CHECK_ROWS = 20_000  # rows of the resample the fast paths are checked on (metrics() copies what it draws)


def _check_counts(counts: np.ndarray) -> np.ndarray:
    """A resample's count vector kept on an evenly spaced subset of at most ``CHECK_ROWS`` rows
    (spread over every split): the checks below copy only what it draws, whatever the table size."""
    if counts.size <= CHECK_ROWS:
        return counts
    kept = np.zeros_like(counts)
    step = -(-counts.size // CHECK_ROWS)
    kept[::step] = counts[::step]
    return kept


def _check_paths(evaluator: Evaluator, table: pa.Table, fast: Terms, vector, slow: list[str],
                 point: dict[str, Any], counts: np.ndarray) -> None:
    """Check the fast paths (terms, the task's resampler) against ``metrics()`` on one resample."""
    check = _check_counts(counts)
    drawn = _metrics_or_undefined(evaluator, table.take(_rows_of(check)))
    _check_fast(evaluator, fast, check, drawn)
    if vector is not None and slow:
        _check_resampler(evaluator, table, vector, check, drawn, slow, point)


def _check_fast(evaluator: Evaluator, fast: Terms, counts: np.ndarray, drawn: dict[str, Any]) -> None:
    """Each fast-path metric on the resample ``counts`` must be what ``metrics()`` gives on the
    rows it draws (``drawn``): a metric that is not a ratio of per-row sums fails here."""
    for key, (total, numel, rows) in fast.items():
        w = counts[rows]
        got = float(_ratio(np.array([w @ total[rows]]), np.array([w @ numel[rows]]))[0])
        if not _close(got, _number(drawn.get(key))):
            raise MetricError(f"task {evaluator.key}: on a resample, metric_terms gives {key} = {got!r} but "
                              f"metrics() gives {drawn.get(key)!r}: {key} is not a ratio of per-row sums; "
                              "leave it out of metric_terms")


def _check_resampler(evaluator: Evaluator, table: pa.Table, vector, counts: np.ndarray, drawn: dict[str, Any],
                     slow: list[str], point: dict[str, Any]) -> None:
    """The task's vectorised resamples must give what ``metrics()`` gives on the full table (all
    counts 1) and on the resample ``counts`` (whose rows' metrics are ``drawn``)."""
    whole = vector(np.ones((1, table.num_rows)))
    resample = vector(counts[None, :])
    for key in resample:
        if key not in slow:
            continue
        for got, want, where in ((whole[key][0], point.get(key), "the full table"),
                                 (resample[key][0], drawn.get(key), "a resample")):
            if not _close(float(got), _number(want)):
                raise MetricError(f"task {evaluator.key}: on {where}, its resampler gives {key} = {got!r} but "
                                  f"metrics() gives {want!r}; fix the task's resampler")


def nest(metrics: Mapping[str, Any], flat: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A mapping shaped like ``metrics`` with ``flat[dotted key]`` (None where absent) at its leaves."""
    return {k: nest(v, flat, f"{prefix}{k}.") if isinstance(v, dict) else flat.get(f"{prefix}{k}")
            for k, v in metrics.items()}


def intervals(evaluator: Evaluator, table: pa.Table, metrics: dict[str, Any],
              settings: BootstrapSettings | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(intervals, bootstrap)`` for a result file whose ``metrics = evaluator.metrics(table)``:
    intervals mirror ``metrics`` with ``[lo, hi]`` (or None) at every leaf; bootstrap records
    the settings and, per metric, how many resamples were undefined."""
    settings = settings or evaluator.config.bootstrap
    reps = replicates(evaluator, table, settings, metrics=metrics)
    flat = {k: reps.interval(k) for k in reps.values}
    return nest(metrics, flat), {**record_of(settings), "undefined": reps.undefined()}


def record_of(settings: BootstrapSettings) -> dict[str, Any]:
    """What a result records about how its intervals were drawn."""
    return {"method": "percentile bootstrap over structures", **settings.model_dump(mode="json")}


# ---------------------------------------------------------------------------------------------
# Several models on the same structures


def align(tables: Mapping[str, pa.Table]) -> tuple[dict[str, pa.Table], pa.Array]:
    """The rows every table has, matched by ``id``, in the first table's row order (results on
    one dataset are in one order, grouped by split, so a table already in it is used as it is,
    not copied); and those ids. Matched in Arrow: no Python string a row."""
    ids: dict[str, pa.ChunkedArray] = {}
    for name, table in tables.items():
        if "id" not in table.column_names:
            raise DatasetError(f"{name}: predictions have no 'id' column; models are matched by structure id")
        ids[name] = pc.cast(table.column("id"), pa.string())
        ordered = ids[name].take(pc.array_sort_indices(ids[name]))
        if len(ordered) > 1 and pc.any(pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1))).as_py():
            raise DatasetError(f"{name}: duplicate structure ids in the predictions; ids must be unique")
    if not ids:
        return {}, pa.array([], pa.string())
    common = next(iter(ids.values()))
    for other in ids.values():
        common = common.filter(pc.is_in(common, value_set=other))
    common = common.combine_chunks()
    out = {}
    for name, table in tables.items():
        positions = pc.index_in(common, value_set=ids[name]).to_numpy(zero_copy_only=False)
        in_order = len(positions) == table.num_rows and (np.diff(positions) == 1).all()
        out[name] = table if in_order else table.take(pa.array(positions))
    return out, common


@dataclass
class Difference:
    """``a - b`` of one metric on the same structures, with its paired-bootstrap interval."""

    a: Any
    b: Any
    difference: float | None
    interval: list[float] | None
    undefined: int = 0

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (an undefined interval is never significant)."""
        return self.interval is not None and (self.interval[0] > 0 or self.interval[1] < 0)

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "difference": self.difference, "interval": self.interval,
                "significant": self.significant, "undefined": self.undefined}


def _difference(ra: Replicates, rb: Replicates, key: str, settings: BootstrapSettings) -> Difference:
    a, b = ra.point.get(key), rb.point.get(key)
    if key not in ra.values or key not in rb.values:
        return Difference(a, b, None, None, settings.resamples)
    diff = ra.values[key] - rb.values[key]
    return Difference(a, b, _number(a) - _number(b), percentile_interval(diff, settings.confidence),
                      int(np.count_nonzero(~np.isfinite(diff))))


@dataclass
class PairedComparison:
    n: int  # structures both tables have
    differences: dict[str, Difference]
    settings: BootstrapSettings


def paired(evaluator: Evaluator, table_a: pa.Table, table_b: pa.Table,
           settings: BootstrapSettings | None = None) -> PairedComparison:
    """Per metric, ``a - b`` on the structures both have, with a paired-bootstrap interval."""
    settings = settings or evaluator.config.bootstrap
    aligned, common = align({"a": table_a, "b": table_b})
    if len(common) == 0:
        raise DatasetError("the two predictions share no structure id; nothing to compare")
    strata = strata_labels(aligned["a"], settings)
    ra = replicates(evaluator, aligned["a"], settings, strata=strata)
    rb = replicates(evaluator, aligned["b"], settings, strata=strata)
    keys = [k for k in dict.fromkeys([*ra.point, *rb.point]) if k in ra.values or k in rb.values]
    return PairedComparison(len(common), {k: _difference(ra, rb, k, settings) for k in keys}, settings)


@dataclass
class Ranking:
    """Ranks of several models by one metric on the structures they all have (1 = best; ties
    share the better rank), with the rank range from the bootstrap and the pairs whose paired
    difference is not significant."""

    metric: str
    n: int
    value: dict[str, Any]
    rank: dict[str, int]
    rank_range: dict[str, tuple[int, int]]
    pairs: dict[tuple[str, str], Difference] = field(default_factory=dict)

    def indistinct(self, model: str) -> list[str]:
        """The models whose difference from ``model`` is not significant."""
        out = []
        for (a, b), d in self.pairs.items():
            if model in (a, b) and not d.significant:
                out.append(b if a == model else a)
        return out


def _ranks(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Competition ranks down axis 0 (models); an undefined value ranks last."""
    score = np.where(np.isfinite(values), values if higher_is_better else -values, -np.inf)
    return 1 + (score[None, :, ...] > score[:, None, ...]).sum(axis=1)


def rank(evaluator: Evaluator, tables: Mapping[str, pa.Table], metric: str, *, higher_is_better: bool,
         settings: BootstrapSettings | None = None) -> Ranking:
    """Rank the models of ``tables`` (predictions of one task on one dataset) by ``metric``."""
    settings = settings or evaluator.config.bootstrap
    aligned, common = align(tables)
    names = list(aligned)
    if len(common) == 0:
        return Ranking(metric, 0, {}, {}, {})
    if len(names) == 1:  # nothing to rank against: no resamples needed
        value = flatten_metrics(evaluator.metrics(aligned[names[0]])).get(metric)
        return Ranking(metric, len(common), {names[0]: value}, {names[0]: 1}, {names[0]: (1, 1)})
    strata = strata_labels(aligned[names[0]], settings)
    reps = {m: replicates(evaluator, aligned[m], settings, strata=strata, keys=[metric]) for m in names}
    empty = np.full(settings.resamples, np.nan)
    matrix = np.stack([reps[m].values.get(metric, empty) for m in names])
    point = np.array([_number(reps[m].point.get(metric)) for m in names])
    point_ranks = _ranks(point, higher_is_better)
    ranks = _ranks(matrix, higher_is_better)
    tail = 50.0 * (1.0 - settings.confidence)
    ranges = {m: (int(np.percentile(ranks[i], tail, method="lower")),
                  int(np.percentile(ranks[i], 100.0 - tail, method="higher"))) for i, m in enumerate(names)}
    pairs = {(a, b): _difference(reps[a], reps[b], metric, settings)
             for i, a in enumerate(names) for b in names[i + 1:]}
    return Ranking(metric, len(common), {m: reps[m].point.get(metric) for m in names},
                   {m: int(point_ranks[i]) for i, m in enumerate(names)}, ranges, pairs)
