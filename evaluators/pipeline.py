"""Pipeline checks: the mini sets a model labelled (``labelled_by`` in their manifest: EMT for
oc20-mini, discovery-mini, shift-mini and ttr-mini) say whether a pipeline works end to end, never
how good a model is. The labelling model must score perfectly on them, within the task's
``label_tolerance``: floating-point paths differ between CPUs (AVX-512 vs AVX2 kernels of exp, sums
and BLAS), and relaxations amplify those last bits, so "perfect" is never bitwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mlip_zoo.evaluators.base import TaskConfig
from mlip_zoo.evaluators.record import DatasetRef


@dataclass(frozen=True)
class CheckedMetric:
    metric: str
    value: float | None
    target: float  # the perfect score: 0 for an error, 1 for a share or a ratio like F1
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.value is not None and math.isfinite(self.value) and abs(self.value - self.target) <= self.tolerance

    def describe(self) -> str:
        """"exact within 1e-09" rather than a bare round-off figure such as 2.7e-16."""
        if self.ok:
            return f"{self.metric}: exact within {self.tolerance:.0e}"
        return f"{self.metric}: {self.value} is not within {self.tolerance:.0e} of {self.target:g}"


def is_pipeline_check(dataset: DatasetRef) -> bool:
    """Results on a dataset some model labelled are pipeline checks, never a ranking."""
    # Results written before datasets named their labeller say so only in the set's label.
    return bool(dataset.labelled_by) or "(EMT labels)" in dataset.name


def label_check(config: TaskConfig, model: str, labelled_by: str | None,
                metrics: dict[str, Any]) -> list[CheckedMetric] | None:
    """The task's tolerance checks when ``model`` made the labels (``labelled_by``); None otherwise."""
    if labelled_by != model or not config.label_tolerance:
        return None
    out = []
    for metric, tolerance in config.label_tolerance.items():
        value = metrics.get(metric)
        target = 1.0 if config.metrics[metric].higher_is_better else 0.0
        out.append(CheckedMetric(metric, None if value is None else float(value), target, tolerance))
    return out
