"""Harness overhead: `evaluate(model, "oc20-s2ef")` vs a plain loop of the same model's ASE
calculator over the same structures, measured side by side in one process. Both start from the
dataset file (the loop reads it as a user's script would) and the model already loaded.

A second loop resets the calculator before each structure, as the harness does so that no
prediction depends on the one before it (for EMT that means rebuilding its neighbour list).

Prints one JSON line: medians over repeats and their ratio. Usage:
    python benchmarks/overhead.py [--model emt] [--n 200] [--repeats 5] [--workers 0]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from mlip_zoo.evaluators.base import load_task_config
from mlip_zoo.evaluators.data import iter_records, resolve_dataset
from mlip_zoo.evaluators.runner import RunOptions, evaluate
from mlip_zoo.zoo import load_potential


def plain_loop(calc, path, n: int, reset: bool = False) -> list[np.ndarray]:
    forces = []
    for atoms in islice(iter_records(path), n):
        if reset:
            calc.reset()
        atoms.calc = calc
        atoms.get_potential_energy()
        forces.append(atoms.get_forces())
    return forces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="emt")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()

    config = load_task_config("oc20-s2ef")
    dataset = resolve_dataset(config.dataset, config.dataset_file)
    # The plain loop gets the model's own calculator, loaded once, as a user's script would.
    with contextlib.redirect_stdout(sys.stderr):  # model banners would break the one JSON line
        calc = load_potential(args.model).calculator

    loop_s, reset_s, harness_s = [], [], []
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit all alike
        t0 = time.perf_counter()
        reference = plain_loop(calc, dataset.path, args.n)
        loop_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        plain_loop(calc, dataset.path, args.n, reset=True)
        reset_s.append(time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            evaluate(args.model, "oc20-s2ef", RunOptions(out=Path(out), workers=args.workers, limit=args.n))
            harness_s.append(time.perf_counter() - t0)
            table = pq.read_table(Path(out) / args.model / "oc20-s2ef.parquet")
    got = [np.reshape(f, (-1, 3)) for f in table.column("forces_pred").to_pylist()]
    same = all(np.allclose(a, b, rtol=0, atol=1e-9) for a, b in zip(reference, got, strict=True))
    loop, reset, harness = statistics.median(loop_s), statistics.median(reset_s), statistics.median(harness_s)
    print(json.dumps({"benchmark": "overhead", "model": args.model, "n_structures": args.n,
                      "workers": args.workers, "repeats": args.repeats, "plain_loop_s": round(loop, 4),
                      "plain_loop_reset_s": round(reset, 4), "harness_s": round(harness, 4),
                      "ratio": round(harness / loop, 3), "ratio_vs_reset_loop": round(harness / reset, 3),
                      "same_predictions": same}))


if __name__ == "__main__":
    main()
