"""Process-level scaling: the same `evaluate` run on 1 and on 2 Dask workers (embedded LocalCluster,
start-up and each worker's model load included), interleaved repeats, one JSON line of medians.
The two runs must give identical prediction tables (the runner's determinism guarantee).

By default each worker gets the runner's torch threads (cores // workers: one worker uses every
core through torch's threads); ``--threads-per-worker 1`` pins both runs to one thread a worker,
which measures how the harness itself scales with processes.
Usage: python benchmarks/scaling.py [--model chgnet-0.3.0] [--task oc20-s2ef] [--limit N] [--repeats 3]
                                    [--threads-per-worker T]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from mlip_zoo.evaluators.runner import RunOptions, evaluate


def run(model: str, task: str, workers: int, limit: int | None, threads: int | None):
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        evaluate(model, task, RunOptions(out=Path(out), workers=workers, limit=limit, torch_threads=threads))
        seconds = time.perf_counter() - t0
        table = pq.read_table(Path(out) / model / f"{task}.parquet").drop_columns(["seconds"])
    return seconds, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="chgnet-0.3.0")
    parser.add_argument("--task", default="oc20-s2ef")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads-per-worker", type=int, default=None)
    args = parser.parse_args()
    times: dict[int, list[float]] = {1: [], 2: []}
    tables = {}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both alike
        for workers in (1, 2):
            seconds, tables[workers] = run(args.model, args.task, workers, args.limit, args.threads_per_worker)
            times[workers].append(seconds)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(json.dumps({"benchmark": "scaling", "model": args.model, "task": args.task, "limit": args.limit,
                      "n_structures": tables[1].num_rows, "cores": os.cpu_count(), "repeats": args.repeats,
                      "threads_per_worker": args.threads_per_worker or "cores // workers",
                      "one_worker_s": round(one, 2), "two_workers_s": round(two, 2),
                      "speedup": round(one / two, 3), "identical_tables": tables[1].equals(tables[2]),
                      "all_s": {str(k): [round(t, 2) for t in v] for k, v in times.items()}}))


if __name__ == "__main__":
    main()
