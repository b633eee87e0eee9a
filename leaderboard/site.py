"""The static leaderboard site: ``build_site(results_dir, out_dir)`` renders an index (models x
tasks, reader-weighted combined score), a page per model and a page per task with plots.
Every number shows its bootstrap interval (from the result file), every model its rank as a
range, and pairs whose paired difference is not significant are marked (computed in ranking.py,
from the predictions of all models on the structures they share). The combined score gets the same
from each term's resamples, recomputed by site.js when the reader changes the weights. Each number
says whether a re-run of a sample reproduced it ("re-run verified (k/k)", from the result's
sidecar, leaderboard/verify.py) or only its metrics were recomputed; a switch in the page limits
the combined score to verified results.

The site must open from ``file://`` with no network: plotly.min.js is copied from the installed
plotly package, and data travels as JSON inside ``<script type="application/json">`` tags (file://
forbids fetch/XHR of local files). Every template autoescapes, and embedded JSON has ``<``, ``>``
and ``&`` escaped, so a model name can never close a script tag.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup

from mlip_zoo.errors import CardError, ConfigError, MlipZooError
from mlip_zoo.evaluators.base import Evaluator, TaskConfig, evaluator_for, load_task_config, task_keys
from mlip_zoo.evaluators import plots as plotting
from mlip_zoo.evaluators.pipeline import is_pipeline_check, label_check
from mlip_zoo.evaluators.store import ResultStore, StoredResult, read_stored
from mlip_zoo.leaderboard.ranking import (Results, _combined_terms, _rank_facts, _rankings, _term_replicates, combined,
                                          combined_uncertainty)
from mlip_zoo.leaderboard.verify import check_verification
from mlip_zoo.zoo.card import ModelCard, builtin_cards_dir, load_cards

TEMPLATES = Path(__file__).parent / "templates"
PLOT_ROWS = 20_000  # structures per result the plots are drawn from (a fixed random sample beyond)
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


def _load_results(results_dir: Path, configs: dict[str, TaskConfig]) -> Results:
    """{model: {task: result}}; anything the site cannot show is skipped with a warning."""
    results: Results = {}
    for stored_path in ResultStore(results_dir).files():
        try:
            stored = read_stored(stored_path)
        except MlipZooError as exc:
            warnings.warn(f"skipped: {exc}", stacklevel=3)
            continue
        path, record = stored.path, stored.record
        model, task = record.model, record.task
        if task not in configs:
            warnings.warn(f"{path}: unknown task {task!r}; skipped", stacklevel=3)
        elif record.task_version != configs[task].version:
            warnings.warn(f"{path}: {task} version {record.task_version} is not the current "
                          f"{configs[task].version}; its numbers are not comparable, skipped", stacklevel=3)
        elif not SAFE_KEY.match(model):
            warnings.warn(f"{path}: model key {model!r} cannot name a page; skipped", stacklevel=3)
        else:
            if task in results.get(model, {}):
                warnings.warn(f"{path}: a second result for {model} x {task}; this one is used", stacklevel=3)
            results.setdefault(model, {})[task] = stored
    return results


def _verification(stored: StoredResult) -> dict[str, Any]:
    """What the site says of a result's re-run: ``state`` verified / failed / none (recomputed
    only), from its sidecar; an inconsistent sidecar counts as none, with a warning."""
    try:
        v = check_verification(stored.path, stored.record)
    except MlipZooError as exc:
        warnings.warn(f"verification ignored: {exc}", stacklevel=3)
        v = None
    if v is None:
        return {"state": "none", "text": "recomputed only"}
    return {"state": "verified" if v.outcome == "verified" else "failed", "text": v.summary, "seed": v.seed,
            "checked": v.checked, "agreed": v.agreed, "when": v.verified_at, "code": v.code_version}


def _cards() -> dict[str, ModelCard]:
    try:
        return load_cards()
    except CardError as exc:  # one broken user card should not take the whole site down
        warnings.warn(f"{exc}; showing built-in cards only", stacklevel=3)
        return load_cards([builtin_cards_dir()])


# ---------------------------------------------------------------------------------------------
# Plot data, computed from the predictions Parquet files


def _plot_data(stored: StoredResult, evaluator: Evaluator) -> dict[str, Any] | None:
    """The task's plot data of one result (``Evaluator.plots``) from at most ``PLOT_ROWS``
    structures of its predictions (a fixed random sample, read a row group at a time, so a
    million-frame file costs what a small one does), the columns the task plots (never ids or
    reasons) and its metrics; the mean seconds per structure is over every row."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(stored.predictions)
        columns = [c for c in file.schema_arrow.names if c in evaluator.plot_columns]
        n = file.metadata.num_rows
        chosen, parts, start = plotting.sample(n, PLOT_ROWS), [], 0
        for group in range(file.num_row_groups):
            size = file.metadata.row_group(group).num_rows
            rows = chosen[(chosen >= start) & (chosen < start + size)] - start
            if rows.size:
                parts.append(file.read_row_group(group, columns=columns).take(rows))
            start += size
        table = pa.concat_tables(parts) if parts else file.schema_arrow.empty_table().select(columns)
        data = evaluator.plots(table, stored.record.metrics)
        if "seconds" in file.schema_arrow.names and data is not None:
            times = [b.filter(pc.equal(b.column("status"), "ok")).column("seconds")
                     for b in file.iter_batches(columns=["status", "seconds"])]
            total = sum(pc.sum(t).as_py() or 0.0 for t in times)
            counted = sum(len(t) - t.null_count for t in times)
            data["seconds"] = total / counted if counted else None
        if data is not None and n > PLOT_ROWS:
            data["sampled"] = {"rows": table.num_rows, "of": n}
        return data
    except (MlipZooError, OSError, ValueError) as exc:
        warnings.warn(f"no plots for {stored.record.model} x {evaluator.key}: {exc}", stacklevel=3)
        return None


def _pipeline_checks(results: Results, configs: dict[str, TaskConfig],
                     names: dict[str, str]) -> list[dict[str, Any]]:
    """One row per result on a set a model labelled: the labeller's tolerance checks, or for any
    other model its headline number, shown only as proof that its pipeline ran."""
    out = []
    for model, by_task in sorted(results.items()):
        for task, stored in by_task.items():
            record = stored.record
            dataset = record.dataset
            if not is_pipeline_check(dataset):
                continue
            config = configs[task]
            checked = label_check(config, model, dataset.labelled_by, record.metrics)
            out.append({"model": model, "name": names.get(model, model), "task": task, "dataset": dataset.name,
                        "labelled_by": dataset.labelled_by, "n": record.n_structures,
                        "failed": record.n_failed, "headline": config.metrics[config.headline].label,
                        "value": record.metrics.get(config.headline),
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
    board: Results = {}
    for model, by_task in results.items():
        for task, stored in by_task.items():
            if not is_pipeline_check(stored.record.dataset):
                board.setdefault(model, {})[task] = stored
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
    coverage = {key: {t: by_task[t].record.metrics.get(spec["coverage"]) for t, spec in terms.items()
                      if spec.get("coverage") and t in by_task} for key, by_task in board.items()}
    term_reps = _term_replicates(board, terms, configs)
    confidence = min((configs[t].bootstrap.confidence for t in terms), default=0.95)
    combined_ci = combined_uncertainty(term_reps, terms, confidence, names, coverage)

    # Per-model headline values and combined score, for the first render (JS recomputes on change).
    rows = []
    for key, stored_by_task in results.items():
        by_task = {t: stored.record for t, stored in stored_by_task.items()}  # what the templates read
        ranked = {t: stored.record for t, stored in board.get(key, {}).items()}
        values = {t: r.metrics.get(configs[t].headline) for t, r in ranked.items()}
        term_values = {t: ranked[t].metrics.get(s["metric"]) if t in ranked else None for t, s in terms.items()}
        card = models[key]["card"]
        functional_notes = {t: f"{card.functional} model, {configs[t].reference_functional} references"
                            for t in ranked if card is not None and configs[t].reference_functional
                            and card.functional != configs[t].reference_functional}
        verified = {t: _verification(stored) for t, stored in stored_by_task.items()}
        rows.append({**models[key], "results": by_task, "board": ranked, "values": values, "term_values": term_values,
                     "functional_notes": functional_notes, "verified": verified,
                     "verified_tasks": sorted(t for t in ranked if verified[t]["state"] == "verified"),
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
                plots[t][key] = {"name": models[key]["name"], "headline": by_task[t].record.metrics.get(configs[t].headline),
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
                                  "coverage": r["coverage"], "replicates": term_reps.get(r["key"], {}),
                                  "verified": r["verified_tasks"],
                                  "verified_score": combined(r["term_values"], terms, r["coverage"],
                                                             only=r["verified_tasks"])["score"]}
                                 for r in ranked_rows]}
        _write(tmp / "index.html", env.get_template("index.html.j2").render(
            root="", rows=ranked_rows, board_tasks=board_tasks, checks=checks, data=index_data, **common))
        for r in rows:
            _write(tmp / "models" / f"{r['key']}.html", env.get_template("model.html.j2").render(
                root="../", model=r, max_failures=MAX_FAILURES, **common))
        for t, config in configs.items():
            task_rows = [r for r in rows if t in r["results"]]
            datasets = {(d.name, d.file, d.sha256): d for d in (r["results"][t].dataset for r in task_rows)}
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
