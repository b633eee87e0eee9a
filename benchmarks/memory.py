"""Peak memory vs dataset size: an EMT S2EF run (`evaluate`, in-process) over N and 10 N structures.

The structures are oc20-mini's EMT-labelled frames, cycled under new ids (the labels stay exact),
written once to a temporary extxyz. Each run is a fresh process, so its peak RSS is its own.
Prints one JSON line. Usage: python benchmarks/memory.py [--n 1000] [--factor 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from itertools import cycle, islice
from pathlib import Path

RUN = """
import json, resource, sys, time
from pathlib import Path
import mlip_zoo.evaluators.runner as runner
from mlip_zoo.evaluators.oc20.tasks import S2EF

def rss():
    # VmHWM, not ru_maxrss: ru_maxrss carries the parent's peak (it wrote the datasets) across fork and exec
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024

# Peak RSS at the end of each phase: streaming shards (up to scoring's first reduced shard), then
# the metrics (from the reduced rows of every shard), then the rest (bootstrap intervals, joined
# predictions file, result record).
marks = {}
reduce, metrics = S2EF.reduce, S2EF.metrics
def first_reduce(self, table):
    marks.setdefault("after_shards", rss())
    return reduce(self, table)
def first_metrics(self, rows):
    out = metrics(self, rows)
    marks.setdefault("after_metrics", rss())
    return out
S2EF.reduce, S2EF.metrics = first_reduce, first_metrics
t0 = time.perf_counter()
record = runner.evaluate("emt", "oc20-s2ef", runner.RunOptions(out=Path(sys.argv[2]), dataset=Path(sys.argv[1]),
                                                               workers=0))
print(json.dumps({"peak_rss_mib": rss(), **marks, "seconds": time.perf_counter() - t0,
                  "n": record.n_structures, "energy_mae": record.metrics["energy_mae"]}))
"""


def write_dataset(path: Path, n: int) -> None:
    from ase.io import write
    from mlip_zoo.evaluators.base import load_task_config
    from mlip_zoo.evaluators.data import iter_records, resolve_dataset

    config = load_task_config("oc20-s2ef")
    frames = list(iter_records(resolve_dataset(config.dataset, config.dataset_file).path))
    out = []
    for i, atoms in enumerate(islice(cycle(frames), n)):
        atoms = atoms.copy()  # copy() keeps the SinglePointCalculator's labels
        atoms.calc = frames[i % len(frames)].calc
        atoms.info.update({"sid": f"m{i}", "fid": 0})
        out.append(atoms)
    write(path, out, format="extxyz")


def peak(dataset: Path, out: Path) -> dict:
    run = subprocess.run([sys.executable, "-c", RUN, str(dataset), str(out)], capture_output=True, text=True,
                         check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--factor", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "small.extxyz", Path(tmp) / "large.extxyz"
        write_dataset(small, args.n)
        write_dataset(large, args.n * args.factor)
        a = peak(small, Path(tmp) / "out-small")
        b = peak(large, Path(tmp) / "out-large")
    # EMT reproduces its own labels, up to the 8 decimals extxyz keeps of each position
    assert max(a["energy_mae"], b["energy_mae"]) < 1e-6, (a, b)
    print(json.dumps({"benchmark": "memory", "model": "emt", "task": "oc20-s2ef", "workers": 0,
                      "n_small": a["n"], "n_large": b["n"], "peak_rss_small_mib": round(a["peak_rss_mib"], 1),
                      "peak_rss_large_mib": round(b["peak_rss_mib"], 1),
                      "ratio": round(b["peak_rss_mib"] / a["peak_rss_mib"], 3),
                      "phases_small_mib": {k: round(a[k], 1) for k in ("after_shards", "after_metrics")},
                      "phases_large_mib": {k: round(b[k], 1) for k in ("after_shards", "after_metrics")},
                      "seconds_small": round(a["seconds"], 1), "seconds_large": round(b["seconds"], 1)}))


if __name__ == "__main__":
    main()
