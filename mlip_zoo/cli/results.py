"""The commands on result files and cards: ``validate`` (pull-request CI), ``reproduce`` and
``compare``; the checks and statistics themselves live in ``leaderboard/``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from mlip_zoo.cli.common import JsonOpt, emit_json, err, escape, fail, out
from mlip_zoo.errors import MlipZooError


def validate(
    paths: Annotated[list[Path], typer.Argument(help="Card files (*.yaml), result files (*.json), or folders of either.")],
    cards: Annotated[Optional[Path], typer.Option(
        "--cards", help="Read each result's model card from DIR/<model>.yaml (a pull request's cards) instead of "
                        "the installed ones.")] = None,
    datasets: Annotated[Optional[list[Path]], typer.Option(
        "--dataset", help="A dataset to re-derive results' references from (matched by sha256; repeatable). "
                          "Embedded datasets are always used.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate submitted model cards and result files, for pull-request CI.

    Cards: the schema (unknown fields, key pattern, file name = key, weight paths, sha256 on
    package/URL sources, pickles need trusted: true, no keyword that switches on unpickling or
    names a file), a known family, a `family: ase` calculator on the allow-list, and sha256/size and
    the loading gate's byte check of any copy of the weights already on this machine. Results:
    complete fields and provenance, a present predictions file, and metrics and bootstrap intervals
    that recompute exactly from it. Imports, executes and unpickles nothing that was submitted.
    """
    from mlip_zoo.leaderboard.validate import validate_files

    rows = validate_files(paths, cards=cards, datasets=datasets or ())
    if as_json:
        emit_json(rows)
    else:
        for r in rows:
            if r["ok"]:
                how = f"; references {r['references']}" if "references" in r else ""
                out.print(f"[green]ok[/] {escape(r['file'])} ({r.get('key', r['kind'])}{escape(how)})", highlight=False)
            else:
                err.print(f"[red]invalid[/] {escape(r['error'])}", highlight=False)
        out.print(f"{sum(r['ok'] for r in rows)} valid, {sum(not r['ok'] for r in rows)} invalid")
    if not rows or not all(r["ok"] for r in rows):  # one row per file: none means no files
        raise typer.Exit(1)


def reproduce(
    result: Annotated[Path, typer.Argument(help="A result file, e.g. results/sevennet-0/oc20-s2ef.json")],
    as_json: JsonOpt = False,
) -> None:
    """Recompute a result's metrics and their bootstrap intervals from its predictions file and
    print the differences (interval rows are named ``intervals.<metric>``)."""
    from mlip_zoo.leaderboard.results import recompute

    try:
        comparison = recompute(result)
    except MlipZooError as exc:
        raise fail(exc) from None
    if as_json:
        emit_json({"file": str(result), "ok": comparison.ok, "recomputed": comparison.recomputed,
                   "intervals": comparison.intervals,
                   "differences": [{"metric": k, "claimed": a, "recomputed": b} for k, a, b in comparison.differences]})
    elif comparison.ok:
        out.print(f"[green]reproduced[/] {escape(str(result))}: every metric and interval recomputes to the "
                  "claimed value", highlight=False)
    else:
        table = Table(title=f"differences in {result}")
        for col in ("metric", "claimed", "recomputed"):
            table.add_column(col)
        for k, a, b in comparison.differences:
            table.add_row(k, repr(a), repr(b))
        out.print(table)
    if not comparison.ok:
        raise typer.Exit(1)


def compare(
    result_a: Annotated[Path, typer.Argument(help="A result file, e.g. results/chgnet-0.3.0/oc20-s2ef.json")],
    result_b: Annotated[Path, typer.Argument(help="A result of the same task on the same dataset.")],
    as_json: JsonOpt = False,
) -> None:
    """Per metric, the paired difference A - B with its bootstrap interval.

    Both predictions files are matched by structure id, and the same bootstrap resamples of the
    shared structures are scored for both models (the task's bootstrap settings), so the
    interval is that of the difference itself. A difference is significant when its interval
    excludes 0. Counts (n, TP, ...) are not compared.
    """
    from mlip_zoo.leaderboard.results import compare as compare_results

    def fmt_number(v) -> str:
        return "—" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    try:
        facts, comparison = compare_results(result_a, result_b)
    except MlipZooError as exc:
        raise fail(exc) from None
    if as_json:
        emit_json({**facts, "metrics": {k: d.as_dict() for k, d in comparison.differences.items()}})
        return
    confidence = round(100 * comparison.settings.confidence)
    table = Table(title=f"{facts['task']}: {facts['model_a']} (A) − {facts['model_b']} (B) on {facts['n_common']} "
                        f"shared structures ({facts['dataset']}; {comparison.settings.resamples} paired resamples)")
    for col in ("metric", "A", "B", "A − B", f"{confidence}% interval", "significant"):
        table.add_column(col, justify="left" if col == "metric" else "right", no_wrap=col != "metric",
                         overflow="fold")
    for key, d in comparison.differences.items():
        interval = "—" if d.interval is None else f"[{fmt_number(d.interval[0])}, {fmt_number(d.interval[1])}]"
        table.add_row(key, fmt_number(d.a), fmt_number(d.b), fmt_number(d.difference), interval,
                      "[bold]yes[/]" if d.significant else "no")
    out.print(table)
    if facts["n_common"] < max(facts["n_a"], facts["n_b"]):
        err.print(f"[yellow]note:[/] A has {facts['n_a']} and B {facts['n_b']} structures; only the "
                  f"{facts['n_common']} both have are compared, so A and B here can differ from their result files",
                  highlight=False)
