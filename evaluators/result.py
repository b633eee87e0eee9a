"""What a result records besides its numbers: provenance (code, packages, hardware) and the
digest of its reference columns; ``build_record`` assembles the ResultRecord of a run."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from mlip_zoo.evaluators.record import DatasetRef, Failure, Provenance, References, ResultRecord
from mlip_zoo.zoo.card import ModelCard
from mlip_zoo.zoo.weights import sha256_of

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


def reference_columns(evaluator) -> tuple[str, ...]:
    """``id`` and the task's ``reference_columns``, each checked to be in its predictions schema."""
    columns = ("id", *evaluator.reference_columns)
    unknown = [c for c in columns if c not in evaluator.schema.names]
    if unknown:
        raise ValueError(f"task {evaluator.key}: reference column(s) {', '.join(unknown)} are not in its predictions "
                         "schema; fix the task's reference_columns")
    return columns


def reference_key(row: dict[str, Any], columns: tuple[str, ...]) -> bytes:
    """One row's reference values, canonically (floats by repr, so exact; NaN and null distinct)."""
    return json.dumps([row[c] for c in columns], allow_nan=True, separators=(",", ":")).encode()


class ReferenceDigest:
    """sha256 over the sha256 of each row's ``reference_key``, in row order: what a result
    records of its references, so they can be checked where the dataset is not at hand."""

    ROWS = 32

    def __init__(self, columns: tuple[str, ...]):
        self.columns, self._sha = columns, hashlib.sha256()

    def update(self, table) -> None:
        table = table.select(list(self.columns))
        # a few rows' Python values at a time: a row group's millions of floats at once would
        # scatter the interpreter's heap, which then grows with every row group
        for start in range(0, table.num_rows, self.ROWS):
            for row in table.slice(start, self.ROWS).to_pylist():
                self._sha.update(hashlib.sha256(reference_key(row, self.columns)).digest())

    def record(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "sha256": self._sha.hexdigest()}


def build_record(*, plan, metrics: dict, intervals: dict, bootstrap: dict, n_structures: int,
                 failures: list[dict], predictions_sha256: str, references: dict[str, Any], started: dt.datetime,
                 wall_time_s: float, n_workers: int, fitted: dict[str, Any] | None = None) -> ResultRecord:
    """The record of one run of ``plan`` (evaluators/plan.py); ``failures`` holds ``{"id", "reason"}``
    of every structure that failed."""
    card, task, dataset, env = plan.card, plan.config, plan.dataset, plan.environment
    packages = package_versions()
    if env is not None:  # the model ran with the environment's packages, not the driver's
        seen = env.info()["packages"]
        packages = {name: seen[name] for name in PACKAGES if name in seen}
    task_inputs = plan.evaluator.provenance()
    return ResultRecord(
        model=card.key, task=task.key, task_version=task.version,
        dataset=DatasetRef(name=dataset.name, file=dataset.path.name, sha256=dataset.sha256, n=n_structures,
                           limit=plan.limit, labelled_by=dataset.labelled_by),
        metrics=metrics, intervals=intervals, n_structures=n_structures, n_failed=len(failures),
        failures=[Failure(**f) for f in failures], predictions=f"{task.key}.parquet",
        predictions_sha256=predictions_sha256, references=References(**references),
        provenance=Provenance(
            card_sha256=card_sha256(card), weights_sha256=dict(plan.weights), task_config_sha256=task.fingerprint(),
            code_version=code_version(), packages=packages, hardware=hardware(n_workers, plan.device),
            started=started.isoformat(timespec="seconds"), wall_time_s=round(wall_time_s, 3), device=plan.device,
            bootstrap=bootstrap, task_inputs=task_inputs or None, fitted=fitted,
            environment={"hash": env.hash, "requires": list(card.requires)} if env is not None else None))
