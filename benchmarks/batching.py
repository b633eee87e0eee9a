"""Does batching pay on this device? SevenNet-0 on the WBM-like cells, side by side in one run:

- model calls: one `Potential.predict` per cell vs the family's batched graph (`_predict_many`) in
  batches of 8 and of all cells, at the given torch threads;
- relaxations: `relax_many` one by one vs in lockstep groups of 8 (each step's calls batched),
  with the answers compared (max |dE| per atom, steps, converged set).

Prints one JSON line of medians. Usage: python benchmarks/batching.py [--n 16] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cells import make_cells
from mlip_zoo.evaluators.relax import RelaxProtocol, relax_many
from mlip_zoo.zoo import get_card, load_potential

PROTOCOL = RelaxProtocol(optimizer="FIRE", fmax=0.05, steps=500, cell_filter="frechet")  # matbench-discovery


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sevennet-0")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    cells = make_cells(args.n)
    with contextlib.redirect_stdout(sys.stderr):
        potential = load_potential(get_card(args.model))

    calls = {"single": lambda: [potential.predict([a])[0] for a in cells],
             "batch_8": lambda: [p for s in range(0, len(cells), 8) for p in potential.predict(cells[s:s + 8])],
             "batch_all": lambda: potential.predict(cells)}
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every variant alike
        for name, fn in calls.items():
            times[name].append(timed(fn)[0])
    single_s, alone = timed(lambda: relax_many(cells, potential, PROTOCOL, batch_size=1))
    lockstep_s, grouped = timed(lambda: relax_many(cells, potential, PROTOCOL, batch_size=8))
    de = max(abs(a.energy - g.energy) / len(a.atoms) for (a, _), (g, _) in zip(alone, grouped, strict=True))
    median = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "benchmark": "batching", "model": args.model, "n_structures": len(cells), "torch_threads": args.threads,
        "calls_s": {k: round(v, 3) for k, v in median.items()},
        "batch_8_vs_single": round(median["batch_8"] / median["single"], 3),
        "batch_all_vs_single": round(median["batch_all"] / median["single"], 3),
        "relax_one_by_one_s": round(single_s, 2), "relax_lockstep_8_s": round(lockstep_s, 2),
        "lockstep_vs_one_by_one": round(lockstep_s / single_s, 3),
        "steps": [sum(r.steps for r, _ in alone), sum(r.steps for r, _ in grouped)],
        "same_converged_set": [r.converged for r, _ in alone] == [r.converged for r, _ in grouped],
        "max_abs_de_mev_per_atom": round(de * 1e3, 5)}))


if __name__ == "__main__":
    main()
