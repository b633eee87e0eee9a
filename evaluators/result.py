"""The result record a run produces (``<out>/<model>/<task>.json``) and its provenance."""

from __future__ import annotations

import datetime as dt
import functools
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from mlip_zoo.zoo.card import ModelCard
from mlip_zoo.zoo.weights import atomic_write_text, sha256_of

# 2: every metric carries a bootstrap interval (``intervals``, mirroring ``metrics``), and
# ``provenance.bootstrap`` records how they were drawn.
RESULT_SCHEMA_VERSION = 2
# Versions worth recording next to every number: they change answers.
PACKAGES = ("mlip-zoo", "ase", "numpy", "torch", "e3nn", "chgnet", "sevenn", "diep", "tblite", "mace-torch",
            "orb-models", "mattersim", "fairchem-core", "pet-mad", "pymatgen", "dask", "distributed", "pyarrow")


def flatten_metrics(metrics: dict[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """``{"splits": {"id": {"energy_mae": x}}}`` -> ``{"splits.id.energy_mae": x}``."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flatten_metrics(value, sep, f"{prefix}{key}{sep}"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def package_versions() -> dict[str, str]:
    return dict(_package_versions())


@functools.lru_cache(maxsize=1)
def _package_versions() -> dict[str, str]:  # what is installed does not change under a running process
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def code_version() -> str:
    import mlip_zoo

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(mlip_zoo.__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{mlip_zoo.__version__}+g{commit}" if commit else mlip_zoo.__version__


def hardware(n_workers: int, device: str) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    if device.startswith("cuda"):
        import torch

        gpu = torch.cuda.get_device_name(torch.device(device))
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "gpu": gpu, "n_workers": n_workers}


def card_sha256(card: ModelCard) -> str | None:
    return sha256_of(card.path) if card.path else None


def build_result(*, card: ModelCard, task, dataset, metrics: dict, intervals: dict, bootstrap: dict,
                 n_structures: int, failures: list[dict], task_inputs: dict[str, Any], predictions: str,
                 weights: dict[str, str],
                 started: dt.datetime, wall_time_s: float, device: str, n_workers: int, limit: int | None
                 ) -> dict[str, Any]:
    """The result record; ``failures`` holds ``{"id", "reason"}`` of every structure that failed and
    ``task_inputs`` the task's ``Evaluator.provenance()``."""
    return {
        "schema_version": RESULT_SCHEMA_VERSION,
        "model": card.key,
        "task": task.key,
        "task_version": task.version,
        "dataset": {"name": dataset.name, "file": dataset.path.name, "sha256": dataset.sha256,
                    "n": n_structures, "limit": limit,
                    **({"labelled_by": dataset.labelled_by} if dataset.labelled_by else {})},
        "metrics": metrics,
        "intervals": intervals,
        "n_structures": n_structures,
        "n_failed": len(failures),
        "failures": failures,
        "predictions": predictions,
        "provenance": {
            "card_sha256": card_sha256(card),
            "weights_sha256": weights,
            "task_config_sha256": task.fingerprint(),
            "code_version": code_version(),
            "packages": package_versions(),
            "hardware": hardware(n_workers, device),
            "started": started.isoformat(timespec="seconds"),
            "wall_time_s": round(wall_time_s, 3),
            "device": device,
            "bootstrap": bootstrap,
            **({"task_inputs": task_inputs} if task_inputs else {}),
        },
    }


def write_result(path: Path, record: dict) -> None:
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False, allow_nan=False) + "\n")
