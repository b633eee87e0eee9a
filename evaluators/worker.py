"""What runs on a worker (a Dask worker process, or this process with ``--workers 0``): one shard
of a plan, with the model loaded once per process and kept for every later shard."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import pyarrow as pa
from ase import Atoms

from mlip_zoo.evaluators import shards
from mlip_zoo.evaluators.plan import Plan

_POTENTIALS: dict[tuple[str, str, str | None], Any] = {}


def _potential(card, device: str, torch_threads: int | None):
    """The model, loaded once per worker process and reused for every shard it runs."""
    key = (card.key, device, str(card.path))
    if key not in _POTENTIALS:
        if torch_threads:
            try:
                import torch

                torch.set_num_threads(torch_threads)  # n workers x threads <= cores: no oversubscription
            except ImportError:
                pass
        from mlip_zoo.zoo.registry import load_potential

        _POTENTIALS[key] = load_potential(card, device=device)
    return _POTENTIALS[key]


def run_shard(plan: Plan, records: list[Atoms], path: str, torch_threads: int | None = None) -> tuple[int, int]:
    """Run one shard and write it with its checksum; returns (n_ok, n_failed)."""
    from pathlib import Path

    evaluator = plan.evaluator
    # Model packages print banners; in a worker that would land in the user's stdout (and --json).
    with contextlib.redirect_stdout(sys.stderr):
        rows = evaluator.checked_run(_potential(plan.card, plan.device, torch_threads), records)
    shards.write(Path(path), pa.Table.from_pylist(rows, schema=evaluator.schema))
    n_failed = sum(r["status"] != "ok" for r in rows)
    return len(rows) - n_failed, n_failed
