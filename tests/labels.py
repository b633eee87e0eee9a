"""Results against labels a model made (the mini sets, labelled by EMT): within the task's
``label_tolerance``, never bit for bit, because floating-point paths differ between CPUs.
Tests that use these carry the ``labels`` marker, which CI reruns with numpy's AVX-512 kernels off."""

from __future__ import annotations

from mlip_zoo.evaluators.base import load_task_config
from mlip_zoo.evaluators.pipeline import label_check
from mlip_zoo.evaluators.record import ResultRecord


def assert_reproduces_labels(record: ResultRecord | dict) -> None:
    """Every metric the task's label_tolerance names is within it of a perfect score (a record,
    or its JSON as `--json` prints it)."""
    if isinstance(record, dict):
        record = ResultRecord.model_validate(record)
    config = load_task_config(record.task)
    checked = label_check(config, record.model, record.dataset.labelled_by, record.metrics)
    assert checked, f"{record.task}: {record.model} did not label {record.dataset.name}"
    failed = [c.describe() for c in checked if not c.ok]
    assert not failed, failed


def near_label(value: float | None, task: str, metric: str) -> bool:
    """One number (a split's, a shard's) within the tolerance the task states for ``metric``."""
    config = load_task_config(task)
    target = 1.0 if config.metrics[metric].higher_is_better else 0.0
    return value is not None and abs(value - target) <= config.label_tolerance[metric]
