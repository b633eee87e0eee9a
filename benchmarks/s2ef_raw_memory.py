"""Peak memory of streaming a raw OC20 S2EF split (N.extxyz.xz + N.txt.xz pairs, 5,000 frames a
file as OC20 packs them) through an EMT `evaluate` (in-process, workers=0), at N and 10 N frames.

The frames are small (Cu2 + H, not periodic: 3 atoms) so EMT's time stays bounded:
1,000 distinct rattled frames, EMT-labelled at full precision, cycled under new sids. Each run is
a fresh process and reports VmHWM (never ru_maxrss, which carries the parent's peak across fork
and exec) at the end of each phase (memory.py's probe: streaming shards, metrics, the rest).
Prints a JSON line per run as it ends, then the comparison. Usage: python benchmarks/s2ef_raw_memory.py [--n 20000] [--factor 10]
"""

from __future__ import annotations

import argparse
import json
import lzma
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import peak  # noqa: E402  (the fresh-process probe the other memory benchmark uses)

PER_FILE = 5000  # frames per pair, as in OC20's tarballs


def frames(n_distinct: int = 1000):
    import numpy as np
    from ase import Atoms
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixAtoms

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n_distinct):
        # Cu2 + H, not periodic: EMT's neighbour list over a periodic 3-atom cell would cost more
        # than everything else per frame (tags and a fixed atom as OC20 has them).
        atoms = Atoms("Cu2H", positions=[(0, 0, 0), (2.55, 0, 0), (1.27, 0.9, 1.2)], cell=[12, 12, 12], pbc=False)
        atoms.positions[1:] += rng.normal(0.0, 0.05, (2, 3))
        atoms.set_tags([0, 1, 2])
        atoms.set_constraint(FixAtoms(indices=[0]))
        emt = atoms.copy()
        emt.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=emt.get_potential_energy(),
                                           forces=emt.get_forces(apply_constraint=False))
        out.append(atoms)
    return out


def write_split(folder: Path, n: int, distinct) -> None:
    from mlip_zoo.evaluators.oc20.make_mini import extxyz_frame

    texts = [extxyz_frame(a) for a in distinct]
    folder.mkdir(parents=True)
    for start in range(0, n, PER_FILE):
        stop = min(n, start + PER_FILE)
        xyz = "".join(texts[i % len(texts)] for i in range(start, stop))
        txt = "".join(f"random{i},frame0,-7.25\n" for i in range(start, stop))
        stem = start // PER_FILE
        (folder / f"{stem}.extxyz.xz").write_bytes(lzma.compress(xyz.encode(), preset=0))
        (folder / f"{stem}.txt.xz").write_bytes(lzma.compress(txt.encode(), preset=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--factor", type=int, default=10)
    args = parser.parse_args()
    distinct = frames()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.n, args.n * args.factor):
            folder = Path(tmp) / str(n) / "s2ef_val_id"  # as unpacked: the records' split is "id"
            t0 = time.perf_counter()
            write_split(folder, n, distinct)
            written = time.perf_counter() - t0
            runs.append({**peak(folder, Path(tmp) / f"out-{n}"), "write_seconds": written})
            assert runs[-1]["n"] == n and runs[-1]["energy_mae"] < 1e-9, runs[-1]  # EMT's own labels
            print(json.dumps({"run": n, **runs[-1]}), flush=True)  # the large run is long: each as it ends
    a, b = runs
    print(json.dumps({"benchmark": "s2ef_raw_memory", "model": "emt", "task": "oc20-s2ef", "workers": 0,
                      "atoms_per_frame": 3, "n_small": a["n"], "n_large": b["n"],
                      "peak_rss_small_mib": round(a["peak_rss_mib"], 1), "peak_rss_large_mib": round(b["peak_rss_mib"], 1),
                      "ratio": round(b["peak_rss_mib"] / a["peak_rss_mib"], 3),
                      "phases_small_mib": {k: round(a[k], 1) for k in ("after_shards", "after_metrics")},
                      "phases_large_mib": {k: round(b[k], 1) for k in ("after_shards", "after_metrics")},
                      "seconds_small": round(a["seconds"], 1), "seconds_large": round(b["seconds"], 1)}))


if __name__ == "__main__":
    main()
