"""Ranking statistics for the leaderboard: the reader-weighted combined score and its terms
(``configs/leaderboard.yaml``), each task's ranks with their bootstrap rank ranges and paired
differences, and the combined score's interval and rank range from the terms' resamples.

Pure numbers from result records and their predictions; ``site.py`` renders them and ``site.js``
mirrors ``combined`` and ``combined_uncertainty`` when the reader changes the weights.
"""

from __future__ import annotations

import importlib.resources
import math
import warnings
from collections.abc import Collection
from typing import Any

import numpy as np
import yaml

from mlip_zoo.errors import ConfigError, MlipZooError
from mlip_zoo.evaluators.base import TaskConfig, evaluator_for, task_keys
from mlip_zoo.evaluators.store import StoredResult
from mlip_zoo.evaluators.uncertainty import percentile_interval, rank, replicates
from mlip_zoo.leaderboard.results import reduced_rows

Results = dict[str, dict[str, StoredResult]]  # {model: {task: result}}


class _Rows:
    """Each result's reduced rows, read once per site build however many rankings use them."""

    def __init__(self):
        self._cache: dict[tuple[str, str], Any] = {}

    def __call__(self, stored: StoredResult, config: TaskConfig):
        key = (str(stored.path), config.model_dump_json())
        if key not in self._cache:
            self._cache[key] = reduced_rows(stored, evaluator_for(config))
        return self._cache[key]


rows_of = _Rows()


def _combined_terms() -> dict[str, dict[str, Any]]:
    path = importlib.resources.files("mlip_zoo.configs") / "leaderboard.yaml"
    try:
        terms = yaml.safe_load(path.read_text())["combined_score"]["terms"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: cannot read combined_score.terms ({exc})") from None
    known = set(task_keys())
    for task in [t for t in terms if t not in known]:
        warnings.warn(f"leaderboard.yaml: combined-score term for unknown task {task!r} ignored", stacklevel=3)
        del terms[task]
    return {t: {"metric": v["metric"], "best": float(v["best"]), "worst": float(v["worst"]),
                "weight": float(v.get("weight", 1.0)), "coverage": v.get("coverage")} for t, v in terms.items()}


def combined(values: dict[str, float | None], terms: dict[str, dict],
             coverage: dict[str, float | None] | None = None, only: Collection[str] | None = None) -> dict[str, Any]:
    """Weighted mean of clamped linear terms over the tasks the model has (site.js mirrors this).
    A term whose task declares a coverage metric counts ``coverage x term``: the references a model
    could not score count as the worst value, so 7 well-fitted elements of 71 never outrank 71.
    ``only``: count only these tasks' values (the page's switch to re-run verified results), the
    others as missing."""
    active = {t: s for t, s in terms.items() if s["weight"] > 0}
    num = den = 0.0
    for task, spec in active.items():
        value = values.get(task) if only is None or task in only else None
        if value is None or spec["best"] == spec["worst"]:
            continue
        term = min(1.0, max(0.0, (value - spec["worst"]) / (spec["best"] - spec["worst"])))
        if spec.get("coverage"):
            term *= min(1.0, max(0.0, (coverage or {}).get(task) or 0.0))
        num, den = num + spec["weight"] * term, den + spec["weight"]
    k = sum(values.get(t) is not None and (only is None or t in only) for t in active)
    return {"score": num / den if den else None, "k": k, "n": len(active)}


# ---------------------------------------------------------------------------------------------
# Ranks with their uncertainty, from the predictions of every model on the same structures


def _rankings(config: TaskConfig, results: Results) -> list[dict[str, Any]]:
    """Per dataset and protocol the task was run with (results on different datasets, or under
    different task options, are never ranked together): the models' ranks by the headline metric
    on the structures they all have, the rank ranges from the bootstrap, and the paired
    difference of every pair."""
    groups: dict[tuple[str, str], dict[str, StoredResult]] = {}
    for model, by_task in results.items():
        if config.key in by_task:
            record = by_task[config.key].record
            key = (record.dataset.sha256, record.provenance.task_config_sha256)
            groups.setdefault(key, {})[model] = by_task[config.key]
    spec = config.metrics.get(config.headline)
    if not groups or spec is None:
        return []
    evaluator = evaluator_for(config)
    out = []
    for records in groups.values():
        tables = {}
        for model, stored in records.items():
            try:
                tables[model] = rows_of(stored, config)
            except MlipZooError as exc:
                warnings.warn(f"{model} x {config.key} is left out of the ranking: {exc}", stacklevel=3)
        if not tables:
            continue
        try:
            ranking = rank(evaluator, tables, config.headline, higher_is_better=spec.higher_is_better,
                           settings=config.bootstrap)
        except MlipZooError as exc:
            warnings.warn(f"no ranking for {config.key}: {exc}", stacklevel=3)
            continue
        names = sorted(tables, key=lambda m: (ranking.rank.get(m, len(tables) + 1), m))
        out.append({"dataset": next(iter(records.values())).record.dataset, "ranking": ranking, "models": names,
                    "matrix": _pair_matrix(ranking), "confidence": config.bootstrap.confidence,
                    "resamples": config.bootstrap.resamples})
    return out


def _pair_matrix(ranking) -> dict[str, dict[str, dict[str, Any]]]:
    """{row: {column: row - column}} from the ranking's pairs (each stored once, as a - b)."""
    matrix: dict[str, dict[str, dict[str, Any]]] = {}
    for (a, b), d in ranking.pairs.items():
        matrix.setdefault(a, {})[b] = {"difference": d.difference, "interval": d.interval, "significant": d.significant}
        flipped = None if d.interval is None else [0.0 - d.interval[1], 0.0 - d.interval[0]]  # 0.0 - x: never -0.0
        matrix.setdefault(b, {})[a] = {"difference": None if d.difference is None else 0.0 - d.difference,
                                       "interval": flipped, "significant": d.significant}
    return matrix


def _rank_facts(groups: list[dict[str, Any]], names: dict[str, str]) -> dict[str, dict[str, Any]]:
    """{model: rank, rank range, names of the models it is indistinguishable from, shared structures}."""
    out = {}
    for group in groups:
        ranking = group["ranking"]
        for model in group["models"]:
            out[model] = {"rank": ranking.rank.get(model), "range": ranking.rank_range.get(model),
                          "indistinct": sorted(names.get(m, m) for m in ranking.indistinct(model)), "n": ranking.n,
                          "of": len(group["models"]), "confidence": group["confidence"]}
    return out


def _term_replicates(results: Results, terms: dict[str, dict],
                     configs: dict[str, TaskConfig]) -> dict[str, dict[str, list[float | None]]]:
    """{model: {task: the term's metric in each bootstrap resample of the model's own predictions}}.

    The draws depend only on the seed, the number of rows and the splits, so models evaluated on
    the same structures share them (a paired bootstrap); site.js recomputes the combined score's
    interval and rank range from these when the reader changes the weights."""
    out: dict[str, dict[str, list[float | None]]] = {}
    for task, spec in terms.items():
        config = configs[task]
        evaluator = None
        for model, by_task in results.items():
            if task not in by_task:
                continue
            try:
                evaluator = evaluator or evaluator_for(config)
                table = rows_of(by_task[task], config)
                values = replicates(evaluator, table, config.bootstrap, keys=[spec["metric"]]).values
            except MlipZooError as exc:
                warnings.warn(f"no combined-score interval from {model} x {task}: {exc}", stacklevel=3)
                continue
            if spec["metric"] in values:
                out.setdefault(model, {})[task] = [float(f"{v:.6g}") if math.isfinite(v) else None
                                                   for v in values[spec["metric"]]]
    return out


def combined_uncertainty(reps: dict[str, dict[str, list[float | None]]], terms: dict[str, dict],
                         confidence: float, names: dict[str, str],
                         coverage: dict[str, dict[str, float | None]] | None = None) -> dict[str, dict[str, Any]]:
    """The combined score's interval, rank range and indistinct models (site.js mirrors this):
    the score of every resample from the term replicates, ranked across models per resample."""
    models = list(reps)
    if not models:
        return {}
    size = min(len(v) for r in reps.values() for v in r.values())
    coverage = coverage or {}
    scores = np.array([[_none_nan(combined({t: reps[m][t][b] for t in reps[m]}, terms, coverage.get(m))["score"])
                        for b in range(size)] for m in models])
    safe = np.where(np.isfinite(scores), scores, -np.inf)
    ranks = 1 + (safe[None, :, :] > safe[:, None, :]).sum(axis=1)
    tail = 50.0 * (1.0 - confidence)
    out = {}
    for i, model in enumerate(models):
        defined = np.isfinite(scores[i])
        rank_range = None
        if defined.any():
            rank_range = [int(np.percentile(ranks[i][defined], tail, method="lower")),
                          int(np.percentile(ranks[i][defined], 100.0 - tail, method="higher"))]
        same = [names.get(other, other) for j, other in enumerate(models) if j != i
                and (ci := percentile_interval(scores[i] - scores[j], confidence)) is not None and ci[0] <= 0 <= ci[1]]
        out[model] = {"interval": percentile_interval(scores[i], confidence), "range": rank_range,
                      "indistinct": sorted(same)}
    return out


def _none_nan(value: float | None) -> float:
    return math.nan if value is None else value
