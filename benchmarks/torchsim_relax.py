"""torch-sim's batched FIRE + Frechet cell filter on the benchmark cells, for benchmarks/relax.py.

Runs in torch-sim's own environment (see RESULTS.md: torch-sim-atomistic 0.3.0 needs sevenn 0.11.2),
never in the project's. Prints one JSON line: seconds, and per structure the final energy and
whether it met the force criterion.
Usage: python torchsim_relax.py CELLS.extxyz CHECKPOINT --fmax 0.05 --steps 500 --threads N
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cells")
    parser.add_argument("checkpoint")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    import torch
    import torch_sim as ts
    from ase.io import read
    from sevenn.util import load_checkpoint
    from torch_sim.models.sevennet import SevenNetModel

    if args.threads:
        torch.set_num_threads(args.threads)
    cells = read(args.cells, index=":")
    model = SevenNetModel(load_checkpoint(args.checkpoint).build_model(), device="cpu", dtype=torch.float32)
    converged = ts.generate_force_convergence_fn(force_tol=args.fmax, include_cell_forces=True)
    t0 = time.perf_counter()
    state = ts.optimize(system=cells, model=model, optimizer=ts.frechet_cell_fire, convergence_fn=converged,
                        max_steps=args.steps)
    seconds = time.perf_counter() - t0
    final = model(state)  # energies and forces at the returned positions and cells
    state.energy, state.forces, state.stress = final["energy"], final["forces"], final["stress"]
    done = converged(ts.frechet_cell_fire(model=model)[0](state), None)
    n = [len(a) for a in cells]
    print(json.dumps({"seconds": seconds, "torch_threads": torch.get_num_threads(),
                      "energy_per_atom": [float(e) / k for e, k in zip(final["energy"], n, strict=True)],
                      "converged": [bool(c) for c in done]}))


if __name__ == "__main__":
    main()
