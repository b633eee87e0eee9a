"""Bootstrap cost: the intervals of every metric of one predictions table (what `mlipzoo eval`
adds after the metrics, and `mlipzoo reproduce` repeats), with the task's fast path
(``Evaluator.metric_terms``) and without it (``metrics()`` once per resample).

The slow path is timed on ``--slow-resamples`` resamples and scaled to the task's count (it is
linear in resamples). Both paths are checked to agree on those resamples. Prints one JSON line.
Usage:
    python benchmarks/bootstrap.py [--predictions results/emt/oc20-s2ef.parquet] [--task oc20-s2ef]
                                   [--noise 0.05] [--repeats 3] [--slow-resamples 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mlip_zoo.evaluators import uncertainty
from mlip_zoo.evaluators.base import evaluator_for


def with_noise(table: pa.Table, sigma: float) -> pa.Table:
    """EMT predictions score 0 everywhere (zero-width intervals); noise gives them spread."""
    rng = np.random.default_rng(0)
    for name in ("energy_pred", "forces_pred", "pos_pred"):
        if name in table.column_names:
            values = [(np.asarray(v) + sigma * rng.standard_normal(np.shape(v))).tolist() if v is not None else None
                      for v in table.column(name).to_pylist()]
            table = table.set_column(table.column_names.index(name), name,
                                     pa.array(values, table.schema.field(name).type))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", default="results/emt/oc20-s2ef.parquet")
    parser.add_argument("--task", default="oc20-s2ef")
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slow-resamples", type=int, default=50)
    args = parser.parse_args()

    table = with_noise(pq.read_table(args.predictions), args.noise)
    evaluator = evaluator_for(args.task)
    settings = evaluator.config.bootstrap
    # The task as the bootstrap sees it without a fast path: every resample calls metrics().
    slow = SimpleNamespace(key=evaluator.key, config=evaluator.config,
                           metrics=evaluator.metrics, metric_terms=lambda table: {})

    t0 = time.perf_counter()
    metrics = evaluator.metrics(table)
    metrics_s = time.perf_counter() - t0
    fast = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        uncertainty.intervals(evaluator, table, metrics, settings)
        fast.append(time.perf_counter() - t0)

    few = settings.model_copy(update={"resamples": max(100, args.slow_resamples)})
    t0 = time.perf_counter()
    reference = uncertainty.replicates(slow, table, few, metrics=metrics)
    slow_s = (time.perf_counter() - t0) * settings.resamples / few.resamples
    check = uncertainty.replicates(evaluator, table, few, metrics=metrics)
    worst = max(float(np.nanmax(np.abs(check.values[k] - reference.values[k])
                                / np.maximum(np.abs(reference.values[k]), 1e-300))) for k in reference.values)
    print(json.dumps({
        "task": args.task, "rows": table.num_rows, "resamples": settings.resamples,
        "metrics_with_intervals": len(check.values), "metrics_call_s": round(metrics_s, 4),
        "fast_path_s": round(statistics.median(fast), 3), "slow_path_s_scaled": round(slow_s, 1),
        "speedup": round(slow_s / statistics.median(fast), 1), "max_rel_diff_fast_vs_slow": worst}))


if __name__ == "__main__":
    main()
