"""Relaxation speed at equal answers: the harness relaxer (evaluators/relax.py on the runner's Dask
workers, each loading the model once) vs matbench-discovery's protocol as its scripts run it (ASE
FIRE + FrechetCellFilter, one structure at a time, one process, the model's own ASE calculator)
vs torch-sim's batched FIRE + Frechet cell filter (SevenNet only: torch-sim 0.3.0 has no CHGNet).

All on the same WBM-like cells (benchmarks/cells.py), side by side in one run. Prints one JSON line.
Usage: python benchmarks/relax.py [--model sevennet-0] [--n 64] [--workers 2] [--shard-atoms 24]
       [--torchsim-python /work/benchenv/torchsim/bin/python]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from cells import make_cells
from mlip_zoo.evaluators.relax import RelaxProtocol, relax_many
from mlip_zoo.evaluators.clusters import Clusters
from mlip_zoo.evaluators.plan import RunOptions
from mlip_zoo.evaluators.worker import _potential
from mlip_zoo.zoo import get_card, load_potential
from mlip_zoo.zoo.weights import resolve_weights

PROTOCOL = RelaxProtocol(optimizer="FIRE", fmax=0.05, steps=500, cell_filter="frechet")  # matbench-discovery
TORCHSIM_PYTHON = Path("/work/benchenv/torchsim/bin/python")


def ase_loop(calc, cells) -> tuple[list[float], list[bool]]:
    """matbench-discovery's relax script, reduced to its physics."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    energies, converged = [], []
    for atoms in cells:
        atoms = atoms.copy()
        atoms.calc = calc
        opt = FIRE(FrechetCellFilter(atoms), logfile=None)
        converged.append(bool(opt.run(fmax=PROTOCOL.fmax, steps=PROTOCOL.steps)))
        energies.append(atoms.get_potential_energy() / len(atoms))
    return energies, converged


def relax_shard(card, device, cells, threads, batch_size):
    """A runner-style shard: the worker's cached model, the harness relaxer, one row per cell."""
    with contextlib.redirect_stdout(sys.stderr):  # model banners would break the one JSON line
        potential = _potential(card, device, threads)
    out = []
    for atoms, (r, _) in zip(cells, relax_many(cells, potential, PROTOCOL, batch_size), strict=True):
        if isinstance(r, Exception):
            raise r
        out.append((r.energy / len(atoms), r.converged))
    return out


def harness(card, cells, workers: int, shard_atoms: int, batch_size: int | None
            ) -> tuple[list[float], list[bool]]:
    shards, shard = [], []
    for atoms in cells:  # atom-balanced shards in dataset order, as the runner cuts them
        shard.append(atoms)
        if sum(len(a) for a in shard) >= shard_atoms:
            shards.append(shard)
            shard = []
    if shard:
        shards.append(shard)
    if workers == 0:
        rows = [row for s in shards for row in relax_shard(card, "cpu", s, None, batch_size)]
    else:
        with Clusters(RunOptions(workers=workers)) as clusters:
            client = clusters.client()
            threads = max(1, (os.cpu_count() or 1) // workers)  # as the runner sets them
            futures = [client.submit(relax_shard, card, "cpu", s, threads, batch_size, pure=False)
                       for s in shards]
            rows = [row for f in futures for row in f.result()]
    return [e for e, _ in rows], [c for _, c in rows]


def torchsim(card, cells, python: Path, threads: int) -> dict | None:
    if not python.exists():
        return None
    (checkpoint,) = [str(f.path) for f in resolve_weights(card).values()]
    with tempfile.TemporaryDirectory() as tmp:
        from ase.io import write

        path = Path(tmp) / "cells.extxyz"
        write(path, cells)
        out = subprocess.run([str(python), str(Path(__file__).parent / "torchsim_relax.py"), str(path), checkpoint,
                              "--fmax", str(PROTOCOL.fmax), "--steps", str(PROTOCOL.steps),
                              "--threads", str(threads)],
                             capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(a: tuple[list[float], list[bool]], b: tuple[list[float], list[bool]]) -> dict:
    both = np.array(a[1]) & np.array(b[1])
    de = np.abs(np.array(a[0]) - np.array(b[0]))[both]
    return {"same_converged_set": a[1] == b[1], "n_converged": [int(sum(a[1])), int(sum(b[1]))],
            "max_abs_de_mev_per_atom": round(float(de.max()) * 1e3, 4) if len(de) else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sevennet-0")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-atoms", type=int, default=24)
    parser.add_argument("--torchsim-python", type=Path, default=TORCHSIM_PYTHON)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="relaxations batched in lockstep per worker (default: the model's relax_batch_size)")
    parser.add_argument("--loop-threads", type=int, default=0, help="torch threads of the ASE loop and torch-sim "
                        "(default: torch's own, one per core, as matbench-discovery's scripts leave it)")
    args = parser.parse_args()

    cells = make_cells(args.n)
    card = get_card(args.model)
    with contextlib.redirect_stdout(sys.stderr):  # model banners would break the one JSON line
        calc = load_potential(card).calculator  # the reference loop gets the model's own calculator
    import torch

    if args.loop_threads:
        torch.set_num_threads(args.loop_threads)
    loop_threads = torch.get_num_threads()

    t0 = time.perf_counter()
    reference = ase_loop(calc, cells)
    loop_s = time.perf_counter() - t0
    t0 = time.perf_counter()  # includes the Dask start-up and each worker loading the model
    ours = harness(card, cells, args.workers, args.shard_atoms, args.batch_size)
    harness_s = time.perf_counter() - t0
    ts = torchsim(card, cells, args.torchsim_python, loop_threads) if card.family == "sevenn" else None

    result = {"benchmark": "relax", "model": args.model, "n_structures": len(cells),
              "n_atoms": sum(len(a) for a in cells), "fmax": PROTOCOL.fmax, "steps": PROTOCOL.steps,
              "workers": args.workers, "shard_atoms": args.shard_atoms, "batch_size": args.batch_size,
              "ase_loop_torch_threads": loop_threads,
              "ase_loop_s": round(loop_s, 2),
              "harness_s": round(harness_s, 2), "speedup_vs_ase_loop": round(loop_s / harness_s, 3),
              "harness_vs_ase_loop": compare(ours, reference)}
    if ts is None:
        result["torchsim"] = ("skipped: torch-sim 0.3.0 has no model for this family" if card.family != "sevenn"
                              else f"skipped: no torch-sim environment at {args.torchsim_python} (RESULTS.md)")
    else:
        result.update({"torchsim_s": round(ts["seconds"], 2), "torchsim_threads": ts["torch_threads"],
                       "speedup_vs_torchsim": round(ts["seconds"] / harness_s, 3),
                       "torchsim_vs_ase_loop": compare((ts["energy_per_atom"], ts["converged"]), reference),
                       "harness_vs_torchsim": compare(ours, (ts["energy_per_atom"], ts["converged"]))})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
