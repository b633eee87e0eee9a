"""Isolated model environments: how long building one takes, reusing it, and rebuilding it after
a requirement change, for a card that requires ``mace-torch==0.3.16`` (pins e3nn 0.4.4).

Builds in a fresh temporary ``MLIPZOO_ENVS`` (pip's own cache is used as usual, so a second
invocation measures a warm cache) and prints one JSON line. Needs PyPI unless pip's cache holds
mace-torch and its dependencies. Usage:
    python benchmarks/envs.py [--requires mace-torch==0.3.16]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import textwrap
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requires", default="mace-torch==0.3.16")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLIPZOO_ENVS"] = str(Path(tmp) / "envs")
        from mlip_zoo.zoo.card import read_card
        from mlip_zoo.zoo.envs import ensure_environment

        def card(requires: list[str]):
            path = Path(tmp) / "bench-env.yaml"
            path.write_text(textwrap.dedent(f"""\
                key: bench-env
                name: environment benchmark
                version: "0"
                family: mace
                license: MIT
                targets: EFS
                requires: {json.dumps(requires)}
                weights: unavailable
                unavailable_reason: only its environment is measured
                """))
            return read_card(path)

        timings = {}
        for label, requires in (("build", [args.requires]), ("reuse", [args.requires]),
                                ("rebuild_after_change", [args.requires, "torch-ema>=0.3"])):
            t0 = time.perf_counter()
            env, built = ensure_environment(card(requires))
            timings[label] = {"seconds": round(time.perf_counter() - t0, 2), "built": built}
        size = sum(p.stat().st_size for p in env.path.rglob("*") if p.is_file() and not p.is_symlink())
        print(json.dumps({"requires": args.requires, **timings, "env_mb": round(size / 1e6, 1),
                          "cpus": os.cpu_count(), "load_avg_1min": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
