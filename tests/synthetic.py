"""Synthetic S2EF predictions at any size, written as a complete, valid result (record +
predictions in row groups the size of the runner's shards): what the memory and scale checks
need without running a model on 10^4-10^6 frames. The numbers are the task's own: the record is
scored by ``scoring.score``, exactly as the runner scores its shards."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa

from mlip_zoo.evaluators.base import evaluator_for
from mlip_zoo.evaluators.record import DatasetRef, Failure, Provenance, References, ResultRecord
from mlip_zoo.evaluators.result import card_sha256, code_version, hardware, package_versions
from mlip_zoo.evaluators.scoring import row_groups, score
from mlip_zoo.evaluators.store import PredictionsWriter, ResultStore
from mlip_zoo.zoo.card import get_card
from mlip_zoo.zoo.weights import sha256_of


def s2ef_batches(n_frames: int, atoms: int = 70, per_group: int = 29, seed: int = 0):
    """Row groups of S2EF predictions rows: reference and predicted energy and forces, a free
    mask with a fixed slab bottom, two splits."""
    evaluator = evaluator_for("oc20-s2ef")
    rng = np.random.default_rng(seed)
    for start in range(0, n_frames, per_group):
        k = min(per_group, n_frames - start)
        forces_true = rng.normal(0.0, 0.5, (k, atoms * 3))
        forces_pred = forces_true + rng.normal(0.0, 0.05, (k, atoms * 3))
        free = np.ones((k, atoms), bool)
        free[:, : atoms // 4] = False
        energy_true = rng.normal(-300.0, 20.0, k)
        numbers = rng.choice(np.array([1, 6, 8, 29], np.uint8), (k, atoms))  # what the alignment counts
        def lists(values: np.ndarray) -> pa.ListArray:  # one list per row, built without Python loops
            offsets = pa.array(np.arange(k + 1, dtype=np.int32) * values.shape[1])
            return pa.ListArray.from_arrays(offsets, pa.array(values.ravel()))

        yield pa.Table.from_pydict({
            "id": [f"frame-{start + i}" for i in range(k)],
            "split": ["id" if (start + i) % 3 else "ood" for i in range(k)],
            "n_atoms": pa.array([atoms] * k, pa.int32()), "status": ["ok"] * k, "reason": pa.nulls(k, pa.string()),
            "seconds": rng.uniform(0.01, 0.02, k),
            "energy_true": energy_true, "energy_pred": energy_true + rng.normal(0.0, 0.1, k),
            "forces_true": lists(forces_true), "forces_pred": lists(forces_pred), "free": lists(free),
            "energy_kind": ["total"] * k, "energy_reference": pa.nulls(k, pa.float64()),
            "energy_pred_kind": ["total"] * k, "numbers": lists(numbers),
        }, schema=evaluator.schema)


def write_s2ef_result(root: Path, n_frames: int, *, atoms: int = 70, seed: int = 0) -> Path:
    """``<root>/emt/oc20-s2ef.json`` with its predictions: ``n_frames`` synthetic frames, scored."""
    evaluator = evaluator_for("oc20-s2ef")
    store = ResultStore(root)
    path = store.result_path("emt", "oc20-s2ef")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".synthetic.parquet")
    with PredictionsWriter(tmp) as writer:  # as the runner joins its shards
        for batch in s2ef_batches(n_frames, atoms, seed=seed):
            writer.write(batch)
    scored = score(evaluator, row_groups(tmp))
    card = get_card("emt")
    record = ResultRecord(
        model="emt", task="oc20-s2ef", task_version=evaluator.config.version,
        dataset=DatasetRef(name="synthetic S2EF", file="synthetic.extxyz", sha256="0" * 64, n=n_frames, limit=None),
        metrics=scored.metrics, intervals=scored.intervals, n_structures=n_frames, n_failed=0,
        failures=[Failure(**f) for f in scored.failures], predictions="oc20-s2ef.parquet",
        predictions_sha256=sha256_of(tmp), references=References(**scored.references),
        provenance=Provenance(card_sha256=card_sha256(card), weights_sha256={},
                              task_config_sha256=evaluator.config.fingerprint(), code_version=code_version(),
                              packages=package_versions(), hardware=hardware(0, "cpu"),
                              started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              wall_time_s=0.0, device="cpu", bootstrap=scored.bootstrap, fitted=scored.fitted))
    store.commit(record, tmp)
    return path
