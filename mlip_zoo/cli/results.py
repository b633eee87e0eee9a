"""The commands on result files and cards: ``validate`` (pull-request CI), ``reproduce`` and
``compare``; the checks and statistics themselves live in ``leaderboard/``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from mlip_zoo.cli.common import JsonOpt, emit_json, err, escape, fail, out, quiet_stdout
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
    complete fields and provenance, a present predictions file, metrics and bootstrap intervals
    that recompute exactly from it, and, when the result has one, a verification sidecar
    (<task>.verified.json, from `mlipzoo verify`) consistent with it: same predictions sha256, the
    sample its seed draws, its outcome following from its findings. Imports, executes and
    unpickles nothing that was submitted.
    """
    from mlip_zoo.leaderboard.validate import validate_files

    rows = validate_files(paths, cards=cards, datasets=datasets or ())
    if as_json:
        emit_json(rows)
    else:
        for r in rows:
            if r["ok"]:
                how = f"; references {r['references']}" if "references" in r else ""
                how += f"; {r['verification']}" if "verification" in r else ""
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


def _option_pairs(pairs: list[str]) -> dict:
    import yaml

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise fail(ValueError(f"--option {pair!r}: write KEY=VALUE, e.g. --option every=2"), 2)
        options[key.strip()] = yaml.safe_load(value)
    return options


def verify(
    result: Annotated[Path, typer.Argument(help="A result file, e.g. results/chgnet-0.3.0/oc20-s2ef.json")],
    sample: Annotated[Optional[int], typer.Option(
        "--sample", min=1, help="Structures to re-run (default: the task config's verify.sample).")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the sample (recorded).")] = 0,
    budget: Annotated[Optional[float], typer.Option(
        "--budget", help="Seconds after which no new structure is started (default: the task's verify.budget_s); "
                         "at least one always runs.")] = None,
    cards: Annotated[Optional[Path], typer.Option(
        "--cards", help="Read the model card from DIR/<model>.yaml (a pull request's cards) instead of the "
                        "installed ones.")] = None,
    dataset: Annotated[Optional[Path], typer.Option(
        "--dataset", help="The dataset the result was evaluated on, when it is not the task's embedded one "
                          "(checked by sha256).")] = None,
    option: Annotated[Optional[list[str]], typer.Option(
        "--option", help="KEY=VALUE of a task option the result was run with (repeatable; the default run "
                         "config's options are tried by themselves).")] = None,
    workers: Annotated[int, typer.Option(min=0, help="Dask workers; 0 runs in this process (a model with its own "
                                                     "environment always runs on a worker of it).")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "cpu",
    env: Annotated[str, typer.Option(
        "--env", help="auto, isolated or shared: where a card with `requires` runs.")] = "auto",
    record: Annotated[bool, typer.Option(
        "--record/--no-record", help="Write the verification beside the result (<task>.verified.json).")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Re-run a seeded sample of a result's structures with the model its card pins, and compare.

    `validate` recomputes metrics from the predictions; it cannot tell predictions from labels
    copied into the file. `verify` loads the model from its card (weights checked by sha256, in
    the card's own environment when it has `requires`), runs the task's own code on K structures
    drawn from the seed (single points, or full relaxations, none started after the time budget)
    and compares every prediction column the task names within its tolerance (`mlipzoo tasks
    show TASK`: float32 and cross-machine relaxation noise). It prints one row per structure,
    writes RESULT's sidecar <task>.verified.json (which `validate` checks and the site shows),
    and exits 1 when any structure disagrees.
    """
    from mlip_zoo.leaderboard.verify import verify_result

    if env not in ("auto", "shared", "isolated"):
        raise fail(ValueError(f"--env must be auto, shared or isolated, not {env!r}"), 2)
    options = _option_pairs(option or [])
    try:
        with quiet_stdout():
            done = verify_result(result, sample=sample, seed=seed, budget_s=budget, cards=cards, dataset=dataset,
                                 options=options, workers=workers, env=env, device=device, write=record)
    except MlipZooError as exc:
        raise fail(exc) from None
    v = done.record
    if as_json:
        emit_json({"file": str(result), "ok": done.ok, "sidecar": str(done.path) if record else None,
                   **v.model_dump(mode="json")})
    else:
        table = Table(title=f"{v.model} × {v.task}: {v.checked} of {len(v.sample)} sampled structures re-run "
                            f"(seed {v.seed}, {v.n_rows} in the result)")
        for col in ("structure", "submitted", "re-run", *v.tolerance, "agrees"):
            table.add_column(col, justify="left" if col in ("structure", "agrees") else "right", overflow="fold")
        for s in v.structures:
            cells = [("—" if (c := s.columns.get(k)) is None or c["max_abs_diff"] is None else
                      f"{c['max_abs_diff']:.2g}" if c["ok"] else f"[red]{c['max_abs_diff']:.2g}[/]") for k in v.tolerance]
            table.add_row(escape(s.id), s.submitted, s.rerun, *cells,
                          "[green]yes[/]" if s.agree else f"[red]NO[/] {escape(s.why or '')}")
        out.print(table)
        limits = ", ".join(f"{k} {t['abs']:g} + {t['rel']:g}·|x|" for k, t in v.tolerance.items())
        out.print(f"columns: largest |submitted − re-run|; allowed: {escape(limits)}", highlight=False)
        if v.checked < len(v.sample):
            err.print(f"[yellow]note:[/] the time budget ({v.budget_s:g} s) stopped the re-run after {v.checked} of "
                      f"{len(v.sample)} structures", highlight=False)
        if done.ok:
            out.print(f"[green]{v.summary}[/] {escape(str(result))}", highlight=False)
        else:
            err.print(f"[red]verification failed[/] {escape(str(result))}: structure(s) "
                      f"{escape(', '.join(v.disagreements))} disagree with the re-run", highlight=False)
        if record:
            out.print(f"recorded in {escape(str(done.path))}", highlight=False)
    if not done.ok:
        raise typer.Exit(1)
