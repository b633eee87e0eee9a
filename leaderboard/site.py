"""The static leaderboard site: ``build_site(results_dir, out_dir)`` renders an index (models x
tasks, reader-weighted combined score), a page per model and a page per task with plots.
Every number shows its bootstrap interval (from the result file), every model its rank as a
range, and pairs whose paired difference is not significant are marked (computed here, from the
predictions of all models on the structures they share). The combined score gets the same from
each term's resamples, recomputed by site.js when the reader changes the weights.

The site must open from ``file://`` with no network: plotly.min.js is copied from the installed
plotly package, and data travels as JSON inside ``<script type="application/json">`` tags (file://
forbids fetch/XHR of local files). Every template autoescapes, and embedded JSON has ``<``, ``>``
and ``&`` escaped, so a model name can never close a script tag.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup

from mlip_zoo.errors import CardError, ConfigError, MlipZooError
from mlip_zoo.evaluators.base import Evaluator, TaskConfig, evaluator_for, load_task_config, task_keys
from mlip_zoo.evaluators.pipeline import is_pipeline_check, label_check
from mlip_zoo.evaluators.uncertainty import percentile_interval, rank, replicates
from mlip_zoo.leaderboard.results import predictions_path, read_predictions, read_result, result_files
from mlip_zoo.zoo.card import ModelCard, builtin_cards_dir, load_cards

TEMPLATES = Path(__file__).parent / "templates"
MARKER = ".mlipzoo-site"  # only a folder carrying this is ever replaced (never wipe a user's folder)
MAX_FAILURES = 50
SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # keys become file names


# ---------------------------------------------------------------------------------------------
# Helpers the templates use


def script_json(data: Any) -> Markup:
    """JSON safe inside a <script> element: no "</script>", "<!--" or entity can form."""
    text = json.dumps(_finite(data), allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def pct(value: Any) -> str:
    return "—" if not isinstance(value, (int, float)) or not math.isfinite(value) else f"{100 * value:.0f}%"


def safe_url(value: str | None, prefix: str = "") -> str | None:
    """Only http(s) links are rendered: a card could otherwise carry a javascript: URL."""
    if not value:
        return None
    if prefix and not value.startswith(("http://", "https://")):
        value = prefix + value
    return value if value.startswith(("http://", "https://")) else None




def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(script_json=script_json, fmt=fmt, pct=pct, safe_url=safe_url,
                       to_yaml=lambda v: yaml.safe_dump(v, sort_keys=False, allow_unicode=True).strip())
    env.tests["check"] = is_pipeline_check
    return env


# ---------------------------------------------------------------------------------------------
# Inputs


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
             coverage: dict[str, float | None] | None = None) -> dict[str, Any]:
    """Weighted mean of clamped linear terms over the tasks the model has (site.js mirrors this).
    A term whose task declares a coverage metric counts ``coverage x term``: the references a model
    could not score count as the worst value, so 7 well-fitted elements of 71 never outrank 71."""
    active = {t: s for t, s in terms.items() if s["weight"] > 0}
    num = den = 0.0
    for task, spec in active.items():
        value = values.get(task)
        if value is None or spec["best"] == spec["worst"]:
            continue
        term = min(1.0, max(0.0, (value - spec["worst"]) / (spec["best"] - spec["worst"])))
        if spec.get("coverage"):
            term *= min(1.0, max(0.0, (coverage or {}).get(task) or 0.0))
        num, den = num + spec["weight"] * term, den + spec["weight"]
    k = sum(values.get(t) is not None for t in active)
    return {"score": num / den if den else None, "k": k, "n": len(active)}


def _load_results(results_dir: Path, configs: dict[str, TaskConfig]) -> dict[str, dict[str, dict]]:
    """{model: {task: record}}; anything the site cannot show is skipped with a warning."""
    results: dict[str, dict[str, dict]] = {}
    for path in result_files(results_dir):
        try:
            record = read_result(path)
        except MlipZooError as exc:
            warnings.warn(f"skipped: {exc}", stacklevel=3)
            continue
        model, task = str(record["model"]), str(record["task"])
        if task not in configs:
            warnings.warn(f"{path}: unknown task {task!r}; skipped", stacklevel=3)
        elif str(record["task_version"]) != configs[task].version:
            warnings.warn(f"{path}: {task} version {record['task_version']} is not the current "
                          f"{configs[task].version}; its numbers are not comparable, skipped", stacklevel=3)
        elif not SAFE_KEY.match(model):
            warnings.warn(f"{path}: model key {model!r} cannot name a page; skipped", stacklevel=3)
        else:
            if task in results.get(model, {}):
                warnings.warn(f"{path}: a second result for {model} x {task}; this one is used", stacklevel=3)
            record["_path"] = path
            results.setdefault(model, {})[task] = record
    return results


def _cards() -> dict[str, ModelCard]:
    try:
        return load_cards()
    except CardError as exc:  # one broken user card should not take the whole site down
        warnings.warn(f"{exc}; showing built-in cards only", stacklevel=3)
        return load_cards([builtin_cards_dir()])


# ---------------------------------------------------------------------------------------------
# Plot data, computed from the predictions Parquet files


def _plot_data(record: dict, evaluator: Evaluator) -> dict[str, Any] | None:
    """The task's plot data of one result (``Evaluator.plots``), from the columns of its predictions
    file the task plots (never ids or reasons) and its metrics."""
    import pyarrow.parquet as pq

    try:
        path = predictions_path(record["_path"], record)
        columns = [c for c in pq.read_schema(path).names if c in evaluator.plot_columns]
        return evaluator.plots(pq.read_table(path, columns=columns), record["metrics"])
    except (MlipZooError, OSError, ValueError) as exc:
        warnings.warn(f"no plots for {record['model']} x {evaluator.key}: {exc}", stacklevel=3)
        return None


# ---------------------------------------------------------------------------------------------
# Ranks with their uncertainty, from the predictions of every model on the same structures


def _rankings(config: TaskConfig, results: dict[str, dict[str, dict]]) -> list[dict[str, Any]]:
    """Per dataset and protocol the task was run with (results on different datasets, or under
    different task options, are never ranked together): the models' ranks by the headline metric
    on the structures they all have, the rank ranges from the bootstrap, and the paired
    difference of every pair."""
    groups: dict[tuple[str, str], dict[str, dict]] = {}
    for model, by_task in results.items():
        if config.key in by_task:
            record = by_task[config.key]
            key = (record["dataset"]["sha256"], record["provenance"].get("task_config_sha256", ""))
            groups.setdefault(key, {})[model] = record
    spec = config.metrics.get(config.headline)
    if not groups or spec is None:
        return []
    evaluator = evaluator_for(config)
    out = []
    for records in groups.values():
        tables = {}
        for model, record in records.items():
            try:
                tables[model] = read_predictions(record["_path"], record, evaluator)
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
        out.append({"dataset": next(iter(records.values()))["dataset"], "ranking": ranking, "models": names,
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


def _term_replicates(results: dict[str, dict[str, dict]], terms: dict[str, dict],
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
            record = by_task[task]
            try:
                evaluator = evaluator or evaluator_for(config)
                table = read_predictions(record["_path"], record, evaluator)
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


def _pipeline_checks(results: dict[str, dict[str, dict]], configs: dict[str, TaskConfig],
                     names: dict[str, str]) -> list[dict[str, Any]]:
    """One row per result on a set a model labelled: the labeller's tolerance checks, or for any
    other model its headline number, shown only as proof that its pipeline ran."""
    out = []
    for model, by_task in sorted(results.items()):
        for task, record in by_task.items():
            dataset = record["dataset"]
            if not is_pipeline_check(dataset):
                continue
            config = configs[task]
            checked = label_check(config, model, dataset, record["metrics"])
            out.append({"model": model, "name": names.get(model, model), "task": task, "dataset": dataset["name"],
                        "labelled_by": dataset.get("labelled_by"), "n": record["n_structures"],
                        "failed": record["n_failed"], "headline": config.metrics[config.headline].label,
                        "value": record["metrics"].get(config.headline),
                        "checks": None if checked is None else [
                            {"text": c.describe(), "ok": c.ok} for c in checked]})
    out.sort(key=lambda c: (c["checks"] is None, c["task"], c["model"]))
    return out


# ---------------------------------------------------------------------------------------------
# Build


def _card_facts(key: str, card: ModelCard | None) -> dict[str, Any]:
    if card is None:
        return {"key": key, "name": key, "family": "", "card": None}
    return {"key": key, "name": card.name, "family": card.family, "card": card}


def build_site(results_dir: Path, out_dir: Path) -> Path:
    """Render the site from ``results_dir`` into ``out_dir``; returns the path of index.html.

    The site is built in a temporary folder beside ``out_dir`` and swapped in at the end, so a
    failed build never leaves a half-written site behind.
    """
    results_dir, out_dir = Path(results_dir).resolve(), Path(out_dir).resolve()
    if out_dir == results_dir or out_dir in results_dir.parents:
        raise ConfigError(f"{out_dir}: the site folder must not contain the results folder {results_dir}")
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MARKER).exists())):
        raise ConfigError(f"{out_dir}: exists and is not a site built by mlip-zoo; choose an empty or new folder")

    terms = _combined_terms()
    configs = {k: load_task_config(k) for k in [*terms, *(t for t in task_keys() if t not in terms)]}
    results = _load_results(results_dir, configs)
    # Pipeline checks (results on sets a model labelled) never feed the headline table, the ranks
    # or the combined score; they get their own section.
    board: dict[str, dict[str, dict]] = {}
    for model, by_task in results.items():
        for task, record in by_task.items():
            if not is_pipeline_check(record["dataset"]):
                board.setdefault(model, {})[task] = record
    # Headline columns: the tasks with a ranked result, in the order the combined score lists them;
    # a term no model has a result for is left out rather than marking every score partial.
    board_tasks = {t: c for t, c in configs.items() if any(t in by_task for by_task in board.values())}
    terms = {t: spec for t, spec in terms.items() if t in board_tasks}
    cards = _cards()
    models = {key: _card_facts(key, cards.get(key)) for key in results}
    tasks = list(configs)

    names = {k: m["name"] for k, m in models.items()}
    rankings = {t: _rankings(configs[t], board) for t in tasks}
    ranks = {t: _rank_facts(groups, names) for t, groups in rankings.items()}
    coverage = {key: {t: by_task[t]["metrics"].get(spec["coverage"]) for t, spec in terms.items()
                      if spec.get("coverage") and t in by_task} for key, by_task in board.items()}
    term_reps = _term_replicates(board, terms, configs)
    confidence = min((configs[t].bootstrap.confidence for t in terms), default=0.95)
    combined_ci = combined_uncertainty(term_reps, terms, confidence, names, coverage)

    # Per-model headline values and combined score, for the first render (JS recomputes on change).
    rows = []
    for key, by_task in results.items():
        ranked = board.get(key, {})
        values = {t: r["metrics"].get(configs[t].headline) for t, r in ranked.items()}
        term_values = {t: ranked[t]["metrics"].get(s["metric"]) if t in ranked else None for t, s in terms.items()}
        card = models[key]["card"]
        functional_notes = {t: f"{card.functional} model, {configs[t].reference_functional} references"
                            for t in ranked if card is not None and configs[t].reference_functional
                            and card.functional != configs[t].reference_functional}
        rows.append({**models[key], "results": by_task, "board": ranked, "values": values, "term_values": term_values,
                     "functional_notes": functional_notes,
                     "coverage": coverage.get(key, {}),
                     "ranks": {t: ranks[t][key] for t in ranked if key in ranks.get(t, {})},
                     "combined": {**combined(term_values, terms, coverage.get(key)), **combined_ci.get(key, {})}})
    rows.sort(key=lambda r: (r["combined"]["score"] is None, -(r["combined"]["score"] or 0.0), r["key"]))
    checks = _pipeline_checks(results, configs, names)

    plots: dict[str, dict] = {}
    figures: dict[str, list] = {}
    for t in tasks:
        plots[t], evaluator = {}, evaluator_for(configs[t])
        for key, by_task in results.items():
            if t in by_task and (data := _plot_data(by_task[t], evaluator)) is not None:
                plots[t][key] = {"name": models[key]["name"], "headline": by_task[t]["metrics"].get(configs[t].headline),
                                 **data}
        figures[t] = evaluator.figures(plots[t])

    env = _env()
    common = {"tasks": configs, "terms": terms, "n_results": sum(map(len, results.values())),
              "check_datasets": sorted({c["dataset"] for c in checks})}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.building-"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a site is meant to be served and read
        (tmp / "assets").mkdir()
        (tmp / "models").mkdir()
        (tmp / "tasks").mkdir()
        import plotly

        shutil.copyfile(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", tmp / "assets" / "plotly.min.js")
        for name in ("site.css", "site.js"):
            shutil.copyfile(TEMPLATES / name, tmp / "assets" / name)
        ranked_rows = [r for r in rows if r["board"]]
        index_data = {"terms": terms, "confidence": confidence,
                      "models": [{"key": r["key"], "name": r["name"], "values": r["term_values"],
                                  "coverage": r["coverage"], "replicates": term_reps.get(r["key"], {})}
                                 for r in ranked_rows]}
        _write(tmp / "index.html", env.get_template("index.html.j2").render(
            root="", rows=ranked_rows, board_tasks=board_tasks, checks=checks, data=index_data, **common))
        for r in rows:
            _write(tmp / "models" / f"{r['key']}.html", env.get_template("model.html.j2").render(
                root="../", model=r, max_failures=MAX_FAILURES, **common))
        for t, config in configs.items():
            task_rows = [r for r in rows if t in r["results"]]
            datasets = {(d["name"], d["file"], d["sha256"]): d for d in (r["results"][t]["dataset"] for r in task_rows)}
            _write(tmp / "tasks" / f"{t}.html", env.get_template("task.html.j2").render(
                root="../", task=config, task_rows=task_rows, datasets=list(datasets.values()),
                rankings=rankings[t], names={r["key"]: r["name"] for r in rows}, figures=figures[t],
                plot_data={"task": t, "headline": config.headline, "models": plots[t]}, **common))
        (tmp / MARKER).write_text("built by mlip_zoo.leaderboard.site; this folder is replaced on rebuild\n")
        _swap(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / "index.html"


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _swap(new: Path, target: Path) -> None:
    """Replace ``target`` with ``new``: two renames, so readers see the old or the new site."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
