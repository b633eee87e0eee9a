"""Real scale: metrics, intervals, reproduce, validate, compare and the site at the size of the real
benchmarks, on synthetic predictions (tests/synthetic.py; the numbers are scored by the tasks' own
code). Ratios are measured side by side in one run; absolute figures are printed beside them.

- WBM-size discovery (257,000 rows, the columns the discovery task writes): a bare numpy F1 + MAE,
  the task's point metrics, and its default 1000-resample intervals, in this process.
- S2EF (70-atom frames) at two sizes: `reproduce` (recompute), `validate` and `compare`, each in
  a fresh process for its own peak RSS; the time slope extrapolates to a 1M-frame split.
- `leaderboard build` for 50 models x 8 tasks (the committed results of one model, copied under
  50 keys), in a fresh process.

Prints one JSON line per measurement, then a summary line. Usage:
    python benchmarks/scale.py [--wbm 257000] [--frames 20000 200000] [--models 50] [--skip ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the synthetic-result writer the tests use too


def emit(**fields) -> dict:
    print(json.dumps(fields), flush=True)
    return fields


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def discovery_table(n: int, seed: int = 0) -> pa.Table:
    """``n`` rows in the discovery task's schema: WBM-like hull distances (about 16 % stable),
    model errors of ~0.06 eV/atom, 80 % unique prototypes, 0.5 % failed relaxations."""
    from mlip_zoo.evaluators.base import evaluator_for

    rng = np.random.default_rng(seed)
    each_true = rng.normal(0.12, 0.15, n)
    e_form_dft = rng.normal(-1.0, 0.8, n)
    failed = rng.random(n) < 0.005
    e_form_pred = np.where(failed, np.nan, e_form_dft + rng.normal(0.0, 0.06, n))
    schema = evaluator_for("discovery").schema
    columns = {
        "id": [f"wbm-{i}" for i in range(n)], "formula": ["AB2"] * n, "n_atoms": np.full(n, 3, np.int32),
        "status": np.where(failed, "failed", "ok"), "reason": pa.nulls(n, pa.string()),
        "seconds": rng.uniform(0.1, 1.0, n), "each_true": each_true, "e_form_dft": e_form_dft,
        "unique_prototype": rng.random(n) < 0.8, "corrections": ["none"] * n, "energy": e_form_pred * 3,
        "energy_corrected": e_form_pred * 3, "e_form_pred": e_form_pred, "converged": ~failed,
        "steps": np.full(n, 100, np.int32),
    }
    return pa.table({f.name: columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in schema},
                    schema=schema)


def wbm(n: int, repeats: int) -> dict:
    from mlip_zoo.evaluators import uncertainty
    from mlip_zoo.evaluators.base import evaluator_for

    evaluator = evaluator_for("discovery")
    rows = evaluator.reduce(discovery_table(n))
    each_true = rows.column("each_true").to_numpy()
    each_pred = each_true + rows.column("e_form_pred").to_numpy() - rows.column("e_form_dft").to_numpy()

    def bare():  # F1 and MAE, nothing else: the floor any implementation pays
        stable, called = each_true <= 0, each_pred <= 0
        tp = np.count_nonzero(stable & called)
        precision, recall = tp / np.count_nonzero(called), tp / np.count_nonzero(stable)
        ok = ~np.isnan(each_pred)
        return 2 * precision * recall / (precision + recall), np.abs(each_true[ok] - each_pred[ok]).mean()

    bare_s = median_seconds(bare, 7)
    metrics_s = median_seconds(lambda: evaluator.metrics(rows), repeats)
    metrics = evaluator.metrics(rows)
    t0 = time.perf_counter()
    uncertainty.intervals(evaluator, rows, metrics)
    intervals_s = time.perf_counter() - t0
    return emit(benchmark="scale/wbm-discovery", rows=n, bare_numpy_s=round(bare_s, 5),
                point_metrics_s=round(metrics_s, 4), intervals_1000_s=round(intervals_s, 3),
                metrics_over_bare=round(metrics_s / bare_s, 1), intervals_over_metrics=round(intervals_s / metrics_s, 1))


PEAK = """
import json, sys, time
from pathlib import Path
from mlip_zoo.leaderboard import results

def peak_kib():  # VmHWM, not ru_maxrss, which carries the parent's peak across fork and exec
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
args = [Path(a) for a in sys.argv[2:]]
t0 = time.perf_counter()
if sys.argv[1] == "recompute":
    assert results.recompute(args[0]).ok
elif sys.argv[1] == "validate":
    assert results.validate_result(args[0]).comparison.ok
elif sys.argv[1] == "compare":
    results.compare(args[0], args[1])
elif sys.argv[1] == "site":
    from mlip_zoo.leaderboard.site import build_site
    build_site(args[0], args[1])
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "peak_rss_mib": peak_kib() / 1024}))
"""


def in_process(kind: str, *paths: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", PEAK, kind, *map(str, paths)], capture_output=True, text=True,
                          cwd=REPO / "tests")
    if done.returncode:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def s2ef(sizes: list[int], atoms: int, tmp: Path, repeats: int = 3) -> list[dict]:
    from synthetic import write_s2ef_result

    out = []
    for n in sizes:
        t0 = time.perf_counter()
        a = write_s2ef_result(tmp / f"a{n}", n, atoms=atoms, seed=0)
        b = write_s2ef_result(tmp / f"b{n}", n, atoms=atoms, seed=1)
        written_s = time.perf_counter() - t0
        size_mb = a.with_suffix(".parquet").stat().st_size / 2**20
        row = {"frames": n, "atoms": atoms, "predictions_mib": round(size_mb, 1), "write_two_s": round(written_s, 1)}
        for kind, paths in (("recompute", (a,)), ("validate", (a,)), ("compare", (a, b))):
            # fresh processes, median of ``repeats``: a run's peak varies by a few MiB with the
            # allocators' timing
            got = [in_process(kind, *paths) for _ in range(repeats)]
            row[f"{kind}_s"] = round(statistics.median(g["seconds"] for g in got), 2)
            row[f"{kind}_peak_mib"] = round(statistics.median(g["peak_rss_mib"] for g in got), 1)
            row[f"{kind}_peaks_mib"] = [round(g["peak_rss_mib"], 1) for g in got]
        out.append(emit(benchmark="scale/s2ef", **row))
        shutil.rmtree(tmp / f"a{n}"), shutil.rmtree(tmp / f"b{n}")
    if len(out) == 2:
        small, large = out
        factor = large["frames"] / small["frames"]
        summary = {f"{k}_time_ratio": round(large[f"{k}_s"] / small[f"{k}_s"], 2) for k in ("recompute", "validate", "compare")}
        summary |= {f"{k}_rss_ratio": round(large[f"{k}_peak_mib"] / small[f"{k}_peak_mib"], 3)
                    for k in ("recompute", "validate", "compare")}
        slope = (large["recompute_s"] - small["recompute_s"]) / (large["frames"] - small["frames"])
        summary["recompute_1M_frames_s_extrapolated"] = round(large["recompute_s"] + slope * (1_000_000 - large["frames"]))
        out.append(emit(benchmark="scale/s2ef-ratios", size_factor=factor, **summary))
    return out


TASKS = ("eos", "diatomics", "symmetry", "oc20-s2ef", "oc20-is2re", "oc20-is2rs", "discovery", "geo-opt")


def site(models: int, tmp: Path) -> dict:
    """The committed results of one model on 8 tasks, copied under ``models`` keys."""
    source = REPO / "results" / "chgnet-0.3.0"
    root = tmp / "results"
    for i in range(models):
        folder = root / f"model-{i:02d}"
        folder.mkdir(parents=True)
        for task in TASKS:
            record = json.loads((source / f"{task}.json").read_text())
            record["model"] = folder.name
            (folder / f"{task}.json").write_text(json.dumps(record))
            shutil.copy(source / f"{task}.parquet", folder / f"{task}.parquet")
    got = in_process("site", root, tmp / "site")
    return emit(benchmark="scale/leaderboard-build", models=models, tasks=len(TASKS), seconds=round(got["seconds"], 1),
                peak_rss_mib=round(got["peak_rss_mib"], 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wbm", type=int, default=257_000)
    parser.add_argument("--frames", type=int, nargs=2, default=[20_000, 200_000])
    parser.add_argument("--atoms", type=int, default=70)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--s2ef-repeats", type=int, default=3, help="fresh processes per S2EF measurement (median)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["wbm", "s2ef", "site"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlipzoo-scale-") as tmp:  # never inside the repository
        if "wbm" not in args.skip:
            wbm(args.wbm, args.repeats)
        if "s2ef" not in args.skip:
            s2ef(args.frames, args.atoms, Path(tmp), args.s2ef_repeats)
        if "site" not in args.skip:
            site(args.models, Path(tmp))
    emit(benchmark="scale/done")


if __name__ == "__main__":
    main()
