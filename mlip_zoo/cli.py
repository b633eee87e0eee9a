"""The ``mlipzoo`` command line. Heavy imports (torch, model packages) happen inside commands,
so ``mlipzoo --help`` stays instant."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from mlip_zoo.errors import CardError, ConfigError, DatasetError, MlipZooError

app = typer.Typer(
    help="mlip-zoo: evaluate machine-learned interatomic potentials on standard tasks and publish a leaderboard.\n\n"
         "Start with `mlipzoo models list`, then `mlipzoo models check emt`.",
    no_args_is_help=True, add_completion=False, rich_markup_mode="rich")
models_app = typer.Typer(help="Model cards: list, inspect, download and smoke-test the zoo.", no_args_is_help=True)
app.add_typer(models_app, name="models")

# Long paths and messages stay on one line (grep-able). Written to a log or a pipe, rich would cut
# tables to 80 columns: there the consoles are wide instead.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


def _fail(exc: Exception, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {_escape(str(exc))}", highlight=False)
    return typer.Exit(code)


def _escape(text: str) -> str:
    from rich.markup import escape
    return escape(text)


def _emit_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _quiet_stdout():
    """Model packages print banners to stdout ("CHGNet will run on cpu"); send them to stderr so
    stdout carries only our output and ``--json`` stays parseable."""
    return contextlib.redirect_stdout(sys.stderr)


def _cards():
    from mlip_zoo.zoo.card import load_cards
    try:
        return load_cards()
    except MlipZooError as exc:
        raise _fail(exc) from None


def _card(key: str):
    from mlip_zoo.zoo.card import get_card
    try:
        return get_card(key, _cards())
    except MlipZooError as exc:
        raise _fail(exc) from None


# ---------------------------------------------------------------------------------------------
# models


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """List every model card (built-in and from MLIPZOO_CARDS) with where its weights stand.

    Weights status: [green]local[/] (verified copy on disk or in an installed package), [green]none[/]
    (needs no weights), [yellow]download[/] (fetch from the Hub/URL first), [red]unavailable[/]
    (no public checkpoint).
    """
    from mlip_zoo.zoo.weights import local_status

    rows = []
    for card in _cards().values():
        rows.append({"key": card.key, "name": card.name, "version": card.version, "family": card.family,
                     "targets": card.targets, "license": card.license, "training_sets": card.training_sets,
                     "weights": local_status(card), "lifecycle": card.lifecycle,
                     "card": str(card.path)})
    if as_json:
        return _emit_json(rows)
    table = Table(title=f"{len(rows)} model cards")
    for col in ("key", "family", "targets", "training data", "license", "weights"):
        table.add_column(col)
    colour = {"local": "green", "none": "green", "download": "yellow", "unavailable": "red"}
    for r in rows:
        table.add_row(r["key"], r["family"], r["targets"], ", ".join(r["training_sets"]) or "-", r["license"],
                      f"[{colour[r['weights']]}]{r['weights']}[/]")
    out.print(table)


@models_app.command("show")
def models_show(
    key: Annotated[str, typer.Argument(help="Card key, e.g. chgnet-0.3.0")],
    as_json: JsonOpt = False,
    matbench: Annotated[bool, typer.Option("--matbench", help="Print the card in matbench-discovery's model-card keys.")] = False,
) -> None:
    """Show one model card in full."""
    card = _card(key)
    data = card.to_matbench_discovery() if matbench else {**card.model_dump(mode="json", exclude_defaults=True),
                                                          "card_file": str(card.path)}
    if as_json or matbench:
        return _emit_json(data)
    import yaml
    out.print(_escape(yaml.safe_dump(data, sort_keys=False, allow_unicode=True)), highlight=False)


@models_app.command("fetch")
def models_fetch(
    keys: Annotated[Optional[list[str]], typer.Argument(help="Card keys to fetch.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every card with downloadable weights.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Download (or find locally) and sha256-verify a model's weight files.

    Sources, per file: verified local copies first (Hub cache, URL cache, the package-shipped
    mirror), then the Hugging Face Hub at the pinned revision (HF_ENDPOINT honoured), then URL
    mirrors. Set HF_HUB_OFFLINE=1 to never touch the network.
    """
    from mlip_zoo.zoo.weights import resolve_weights

    cards = _cards()
    selected = [c for c in cards.values() if c.available and c.weight_files] if all_ else [_card(k) for k in keys or []]
    if not selected:
        raise _fail(ValueError("name at least one card key, or pass --all"), 2)
    results, failed = [], 0
    for card in selected:
        try:
            files = resolve_weights(card)
            results.append({"model": card.key, "ok": True, "files": [
                {"filename": f.filename, "path": str(f.path), "sha256": f.sha256, "source": f.source}
                for f in files.values()]})
        except MlipZooError as exc:
            failed += 1
            results.append({"model": card.key, "ok": False, "error": str(exc)})
    if as_json:
        _emit_json(results)
    else:
        for r in results:
            if r["ok"]:
                for f in r["files"]:
                    out.print(f"[green]ok[/] {r['model']}: {f['filename']} ({f['source']}) sha256 {f['sha256'][:12]}… "
                              f"{_escape(f['path'])}", highlight=False)
            else:
                err.print(f"[red]failed[/] {_escape(r['error'])}", highlight=False)
    if failed:
        raise typer.Exit(1)


@models_app.command("check")
def models_check(
    keys: Annotated[Optional[list[str]], typer.Argument(help="Card keys to check.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every card runnable here (weights local or none needed).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Load each model with its verified weights and predict on a small built-in periodic cell.

    Passes when energy, forces and stress (if the card targets stress) are finite, forces sum to
    ~0 on the periodic cell, and the input structure is left untouched.
    """
    from mlip_zoo.zoo.check import smoke_check
    from mlip_zoo.zoo.registry import load_potential
    from mlip_zoo.zoo.weights import local_status

    cards = _cards()
    if all_:
        selected = [c for c in cards.values() if local_status(c) in ("local", "none")]
    else:
        selected = [_card(k) for k in keys or []]
    if not selected:
        raise _fail(ValueError("name at least one card key, or pass --all"), 2)
    reports = []
    with _quiet_stdout(), err.status("") as status:
        for card in selected:
            status.update(f"checking {card.key} …")
            try:
                t0 = time.perf_counter()
                potential = load_potential(card, device=device)
                reports.append(smoke_check(potential, time.perf_counter() - t0).as_dict())
            except Exception as exc:  # one model's failure must not hide the others' results
                reports.append({"model": card.key, "ok": False, "problems": [f"{type(exc).__name__}: {exc}"]})
    if as_json:
        _emit_json(reports)
    else:
        table = Table(title="model check")
        for col in ("model", "result", "cell", "E/atom (eV)", "max |F| (eV/Å)", "|ΣF| (eV/Å)", "stress", "load s", "predict s"):
            table.add_column(col)
        for r in reports:
            if "energy" not in r:
                table.add_row(r["model"], "[red]FAIL[/]", _escape("; ".join(r["problems"]))[:200])
                continue
            table.add_row(r["model"], "[green]ok[/]" if r["ok"] else "[red]FAIL[/] " + _escape("; ".join(r["problems"])),
                          r["structure"].removeprefix("check-"), f"{r['energy_per_atom']:.4f}",
                          f"{r['max_force']:.4f}", f"{r['net_force']:.1e}",
                          "yes" if r["stress"] is not None else "-", f"{r['seconds_load']:.2f}",
                          f"{r['seconds_predict']:.3f}")
        out.print(table)
    if not all(r["ok"] for r in reports):
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------
# validate


@app.command("validate")
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
    from mlip_zoo.leaderboard.results import result_files, validate_result
    from mlip_zoo.zoo.card import read_card
    from mlip_zoo.zoo.families.ase_calc import calculator_class
    from mlip_zoo.zoo.registry import check_family, checkpoint_globals
    from mlip_zoo.zoo.weights import check_local_copies

    files: list[Path] = []
    for p in paths:
        files += sorted(p.glob("*.yaml")) + result_files(p) if p.is_dir() else [p]
    results = []
    for f in files:
        try:
            if f.suffix.lower() not in (".json", ".yaml", ".yml"):  # never opened: it could be a pickle, or huge
                raise CardError(f"{f}: not a model card (*.yaml) or a result file (*.json); validate checks only "
                                "those (or folders of them), and does not open any other file")
            if not f.is_file():
                raise CardError(f"{f}: no such file (or not a regular file); give a card (*.yaml), a result "
                                "(*.json) or a folder of them")
            if f.suffix == ".json":  # what makes a result what it claims: leaderboard.results.validate_result
                checked = validate_result(f, cards=cards, datasets=datasets or ())
                comparison = checked.comparison
                if not comparison.ok:
                    lines = [f"  {k}: claimed {a!r}, recomputed {b!r}" for k, a, b in comparison.differences[:10]]
                    raise CardError(f"{f}: metrics or their intervals do not follow from the predictions file:\n"
                                    + "\n".join(lines))
                results.append({"file": str(f), "ok": True, "kind": "result", "references": checked.references})
                continue
            card = read_card(f)
            try:
                check_family(card.family)
            except MlipZooError as exc:
                raise CardError(f"{f}: family: {exc}") from None
            if card.calculator:  # the checks `eval` makes, importing only allow-listed modules
                calculator_class(card, import_trusted=False)
            problems = check_local_copies(card, allow=checkpoint_globals(card.family))
            if problems:
                raise CardError(f"{f}: " + "; ".join(problems))
            results.append({"file": str(f), "ok": True, "kind": "card", "key": card.key})
        except MlipZooError as exc:
            results.append({"file": str(f), "ok": False, "error": str(exc)})
    if as_json:
        _emit_json(results)
    else:
        for r in results:
            if r["ok"]:
                how = f"; references {r['references']}" if "references" in r else ""
                out.print(f"[green]ok[/] {_escape(r['file'])} ({r.get('key', r['kind'])}{_escape(how)})", highlight=False)
            else:
                err.print(f"[red]invalid[/] {_escape(r['error'])}", highlight=False)
        out.print(f"{sum(r['ok'] for r in results)} valid, {sum(not r['ok'] for r in results)} invalid")
    if not files or not all(r["ok"] for r in results):
        raise typer.Exit(1)


@app.command("reproduce")
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
        raise _fail(exc) from None
    if as_json:
        _emit_json({"file": str(result), "ok": comparison.ok, "recomputed": comparison.recomputed,
                    "intervals": comparison.intervals,
                    "differences": [{"metric": k, "claimed": a, "recomputed": b} for k, a, b in comparison.differences]})
    elif comparison.ok:
        out.print(f"[green]reproduced[/] {_escape(str(result))}: every metric and interval recomputes to the "
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


@app.command("compare")
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
        raise _fail(exc) from None
    if as_json:
        _emit_json({**facts, "metrics": {k: d.as_dict() for k, d in comparison.differences.items()}})
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


def _ask_choice(question: str, choices: list[str], default: str | None = None) -> str:
    while True:
        answer = typer.prompt(f"{question} ({', '.join(choices)})", default=default) if default else \
            typer.prompt(f"{question} ({', '.join(choices)})")
        if answer in choices:
            return answer
        err.print(f"{answer!r} is not one of: {', '.join(choices)}", highlight=False, markup=False)


@app.command("submit")
def submit(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write <key>.yaml into.")] = Path("configs/models"),
) -> None:
    """Scaffold a model card by answering questions, then validate it.

    Next steps are printed: fetch and check the weights, evaluate, and open a pull request with
    the card and its results (CONTRIBUTING.md walks through it).
    """
    import re

    import yaml

    from mlip_zoo.zoo.card import KEY_PATTERN, read_card
    from mlip_zoo.zoo.registry import families

    key = typer.prompt("Card key (lower-case, digits, '-' or '.')")
    while not re.match(KEY_PATTERN, key):
        key = typer.prompt(f"{key!r} is not a valid key; try e.g. my-model-1.0")
    card: dict = {"key": key, "name": typer.prompt("Display name"), "version": typer.prompt("Model version")}
    known = sorted(families())
    card["family"] = _ask_choice("Family", known)
    card["license"] = typer.prompt("License of the weights (SPDX id if there is one)")
    card["targets"] = _ask_choice("Targets", ["E", "EF", "EFS", "EFSM"], default="EFS")
    for field_name, question in (("repo", "Code repository URL"), ("paper", "Paper URL"), ("doi", "DOI URL")):
        answer = typer.prompt(f"{question} (blank to skip)", default="", show_default=False)
        if answer:
            card[field_name] = answer
    sets = typer.prompt("Training sets, comma-separated (blank to skip)", default="", show_default=False)
    if sets:
        card["training_sets"] = [s.strip() for s in sets.split(",") if s.strip()]
    if card["family"] == "ase":
        card["calculator"] = typer.prompt("ASE calculator as module:Class")
    source = _ask_choice("Weights from", ["hub", "url", "package", "none"], default="hub")
    if source != "none":
        entry: dict = {"filename": typer.prompt("File name (relative path)")}
        if source == "hub":
            entry["hf_repo"] = typer.prompt("Hugging Face repo (org/name)")
            entry["revision"] = typer.prompt("Revision (a commit sha pins it; a branch is pinned on first fetch)",
                                             default="main")
        sha = typer.prompt("sha256 of the file (blank if unknown: only allowed for Hub files)", default="",
                           show_default=False)
        if sha:
            entry["sha256"] = sha
        if source == "url":
            entry["mirrors"] = [{"url": typer.prompt("URL")}]
        elif source == "package":
            entry["mirrors"] = [{"package": typer.prompt("Python package that ships it"),
                                 "path": typer.prompt("Path inside the package")}]
        card["weights"] = [entry]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{key}.yaml"
    if path.exists() and not typer.confirm(f"{path} exists; overwrite?", default=False):
        raise typer.Exit(1)
    path.write_text(yaml.safe_dump(card, sort_keys=False, allow_unicode=True))
    try:
        read_card(path)
    except MlipZooError as exc:
        err.print(f"[red]The card was written but is not valid yet:[/] {_escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    out.print(f"[green]wrote[/] {_escape(str(path))}\nNext: mlipzoo models fetch {key} && mlipzoo models check {key}"
              f" && mlipzoo eval {key} oc20-s2ef; then open a pull request with the card and results/{key}/.",
              highlight=False)


env_app = typer.Typer(
    help="Per-model Python environments, for model families whose pins conflict (mace-torch needs e3nn 0.4.4, "
         "SevenNet e3nn>=0.5).\n\nA card's `requires` (and optional `python`) define its environment: a venv under "
         "MLIPZOO_ENVS (default ~/.cache/mlip-zoo/envs) whose own packages come first, layered over this one's "
         "(torch, mlip-zoo, dask). `mlipzoo eval`/`run` build and use it as needed (--env); these commands manage "
         "them. Set MLIPZOO_ENVS to a shared filesystem for SLURM.",
    no_args_is_help=True)
app.add_typer(env_app, name="env")


@env_app.command("create")
def env_create(
    keys: Annotated[list[str], typer.Argument(help="Card keys whose environments to build.")],
    as_json: JsonOpt = False,
) -> None:
    """Build each card's environment, or reuse it when nothing changed.

    A change to the card's `requires`/`python`, to mlip-zoo or to this environment's torch gives a
    new one; `mlipzoo env remove --stale` clears the old ones.
    """
    from mlip_zoo.zoo.envs import ensure_environment

    rows, failed = [], False
    for key in keys:
        card = _card(key)
        if not (card.requires or card.python):
            rows.append({"key": key, "ok": False, "error": f"{key}: its card has no `requires`, so it runs in "
                                                           "mlip-zoo's own environment"})
            failed = True
            continue
        try:
            with err.status(f"environment of {key} …") as status:
                env, built = ensure_environment(card, echo=lambda message: status.update(_escape(message)))
        except MlipZooError as exc:
            rows.append({"key": key, "ok": False, "error": str(exc), "requirement": getattr(exc, "requirement", None),
                         "log": str(getattr(exc, "log", None) or "")})
            failed = True
            continue
        info = env.info()
        rows.append({"key": key, "ok": True, "built": built, "path": str(env.path), "python": str(env.python),
                     "hash": env.hash, "build_seconds": info["build_seconds"], "created": info["created"],
                     "requires": info["requires"]})
    if as_json:
        _emit_json(rows)
    else:
        for r in rows:
            if r["ok"]:
                verb = f"built in {r['build_seconds']:.0f} s" if r["built"] else "reused"
                out.print(f"[green]{verb}[/] {r['key']}: {_escape(r['path'])}", highlight=False)
            else:
                err.print(f"[red]failed[/] {_escape(r['error'])}", highlight=False)
    if failed:
        raise typer.Exit(1)


@env_app.command("list")
def env_list(as_json: JsonOpt = False) -> None:
    """Every built environment: current (matches its card and this mlip-zoo), stale, or orphaned (no card)."""
    from mlip_zoo.zoo.envs import envs_dir, list_environments

    rows = list_environments(_cards())
    if as_json:
        return _emit_json(rows)
    table = Table(title=f"{len(rows)} environments in {envs_dir()}")
    for col in ("key", "hash", "state", "requires", "built", "MB"):
        table.add_column(col)
    colour = {"current": "green", "stale": "yellow", "orphaned": "red"}
    for r in rows:
        table.add_row(r["key"], r["hash"], f"[{colour[r['state']]}]{r['state']}[/]", ", ".join(r["requires"]),
                      r["created"], f"{r['size_mb']:.0f}")
    out.print(table)


@env_app.command("remove")
def env_remove(
    keys: Annotated[Optional[list[str]], typer.Argument(help="Card keys whose environments to delete.")] = None,
    stale: Annotated[bool, typer.Option("--stale", help="Only environments no longer current for their card.")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Every environment.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete environments (they are rebuilt when next needed)."""
    from mlip_zoo.zoo.envs import remove_environments

    if not (keys or stale or all_):
        raise _fail(ValueError("name card keys, or pass --stale or --all"), 2)
    removed = remove_environments(keys or None, stale_only=stale, cards=_cards())
    if as_json:
        return _emit_json({"removed": removed})
    for path in removed:
        out.print(f"removed {_escape(path)}", highlight=False)
    out.print(f"{len(removed)} environment(s) removed")


leaderboard_app = typer.Typer(help="The static leaderboard site.", no_args_is_help=True)
app.add_typer(leaderboard_app, name="leaderboard")


@leaderboard_app.command("build")
def leaderboard_build(
    results: Annotated[Path, typer.Option(help="Results folder (OUT of mlipzoo eval/run).")] = Path("results"),
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write the site.")] = Path("site"),
) -> None:
    """Render the static site: a sortable table with a reader-weighted combined score, a page per
    model and per task with plots. Works from file:// with no network."""
    index = _build_site(results, out_dir)
    out.print(f"[green]site[/] {_escape(str(index))}", highlight=False)


def _build_site(results: Path, out_dir: Path) -> Path:
    from mlip_zoo.leaderboard.site import build_site

    if not results.is_dir():
        raise _fail(ValueError(f"{results}: no results folder; run `mlipzoo eval` or `mlipzoo run` first"))
    try:
        return build_site(results, out_dir)
    except MlipZooError as exc:
        raise _fail(exc) from None


# ---------------------------------------------------------------------------------------------
# tasks, eval, run

tasks_app = typer.Typer(help="Evaluation tasks: list them and read their protocols.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")


@tasks_app.command("list")
def tasks_list(as_json: JsonOpt = False) -> None:
    """List every task with its version, default dataset and headline metric."""
    from mlip_zoo.evaluators.base import load_task_config, task_keys

    try:
        configs = [load_task_config(k) for k in task_keys()]
    except MlipZooError as exc:
        raise _fail(exc) from None
    if as_json:
        return _emit_json([{"key": c.key, "version": c.version, "dataset": c.dataset, "headline": c.headline}
                           for c in configs])
    table = Table(title=f"{len(configs)} tasks")
    for col in ("key", "version", "dataset", "headline metric", "description"):
        table.add_column(col)
    for c in configs:
        spec = c.metrics[c.headline]
        arrow = "↑" if spec.higher_is_better else "↓"
        table.add_row(c.key, c.version, c.dataset, f"{spec.label} {arrow}", c.description[:90])
    out.print(table)


@tasks_app.command("show")
def tasks_show(key: Annotated[str, typer.Argument(help="Task key, e.g. oc20-s2ef")], as_json: JsonOpt = False) -> None:
    """Show a task's full protocol: constants, metrics with units and direction, dataset."""
    from mlip_zoo.evaluators.base import load_task_config

    try:
        config = load_task_config(key)
    except MlipZooError as exc:
        raise _fail(exc) from None
    data = config.model_dump(mode="json")
    if as_json:
        return _emit_json(data)
    import yaml
    out.print(_escape(yaml.safe_dump(data, sort_keys=False, allow_unicode=True)), highlight=False)


data_app = typer.Typer(help="Reference datasets that are too big to ship: fetch them where the network allows.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


def _default_data_dir() -> Path:
    import os

    return Path(os.environ.get("MLIPZOO_DATA", Path.home() / ".cache" / "mlip-zoo" / "data"))


@data_app.command("fetch")
def data_fetch(
    name: Annotated[str, typer.Argument(help="Dataset to fetch: `wbm` (Matbench Discovery's WBM + MP files).")],
    directory: Annotated[Optional[Path], typer.Option(
        "--dir", help="Where to put the files (matbench-discovery's layout: wbm/, mp/). "
                      "Default: $MLIPZOO_DATA or ~/.cache/mlip-zoo/data.")] = None,
    files: Annotated[Optional[list[str]], typer.Option(
        "--file", help="Only these files (repeatable), e.g. --file wbm_summary.")] = None,
    mirror: Annotated[Optional[str], typer.Option(
        "--mirror", help="Base URL of a copy with the same relative paths (default: each file's figshare URL).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Download the real Matbench Discovery files from figshare and check their published md5.

    Files already present with the right md5 are kept. Then point a task at them:
    `mlipzoo eval MODEL discovery --dataset DIR`. Where figshare is unreachable, this says so and
    prints each file's URL and md5, so you can fetch them elsewhere and copy them in.
    """
    from mlip_zoo.evaluators.discovery.wbm import WBM_FILES, fetch

    if name != "wbm":
        raise _fail(MlipZooError(f"unknown dataset {name!r}; known: wbm"))
    target = (directory or _default_data_dir()).expanduser()
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), console=err) as bar:
        tasks: dict[str, int] = {}

        def on_progress(key: str, done: int, total: int | None) -> None:
            if key not in tasks:
                tasks[key] = bar.add_task(key, total=total)
            bar.update(tasks[key], completed=done)

        try:
            report = fetch(target, files, mirror=mirror, on_progress=on_progress)
        except MlipZooError as exc:
            if not as_json:
                err.print("Files and their published md5 (matbench-discovery data-files.yml):", highlight=False)
                for spec in WBM_FILES.values():
                    err.print(f"  {spec.key}: {spec.url} -> {target / spec.path} (md5 {spec.md5})", highlight=False)
            raise _fail(exc) from None
    if as_json:
        return _emit_json({"dir": str(target), "files": report})
    for key, entry in report.items():
        out.print(f"{key}: {entry['status']} {_escape(entry['path'])}", highlight=False)
    out.print(f"Next: mlipzoo eval MODEL discovery --dataset {_escape(str(target))}", highlight=False)


def _progress_bar(total: int | None, label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("[red]{task.fields[failed]} failed"), TextColumn("{task.fields[rate]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False)
    task_id = progress.add_task(label, total=total, failed=0, rate="")
    started = time.perf_counter()
    counts = {"done": 0, "failed": 0}

    def update(ok: int, failed: int) -> None:
        counts["done"] += ok + failed
        counts["failed"] += failed
        rate = counts["done"] / max(time.perf_counter() - started, 1e-9)
        progress.update(task_id, completed=counts["done"], failed=counts["failed"], rate=f"{rate:.3g}/s")

    return progress, update


def _with_reference(task: str, reference: Path):
    """The task's protocol with the user's training set as its ``reference`` (recorded in the
    result's task-config hash and provenance)."""
    from mlip_zoo.evaluators.base import load_task_config

    config = load_task_config(task)
    if "reference" not in config.options:
        raise ConfigError(f"task {task} has no training reference set; --reference is for ood-shift and ttr")
    if not reference.is_file():
        raise DatasetError(f"{reference}: reference (training) set not found (check --reference)")
    return config.model_copy(update={"options": {**config.options, "reference": str(reference.resolve())}})


def _with_options(task: str, options: dict):
    """The task's protocol with a run config's option overrides (e.g. diatomics `every: 2` to
    sub-sample the curves): recorded in the result's task-config hash, and results made under
    different options are never ranked together."""
    from mlip_zoo.evaluators.base import TaskConfig, load_task_config

    config = load_task_config(task)
    unknown = sorted(set(options) - set(config.options))
    if unknown:
        raise ConfigError(f"task {task} has no option(s) {', '.join(unknown)} (it has: {', '.join(config.options)})")
    return TaskConfig.model_validate({**config.model_dump(), "options": {**config.options, **options}})


def _evaluate_one(model: str, task, opts, wandb_mode: str = "offline") -> dict:
    """Evaluate, then hand the written result to the W&B sink (whose failure costs nothing local).
    ``task``: a key, or a task config adjusted for this run (``--reference``)."""
    from mlip_zoo.evaluators.base import load_task_config
    from mlip_zoo.evaluators.data import resolve_dataset
    from mlip_zoo.evaluators.runner import evaluate
    from mlip_zoo.zoo.card import get_card

    config = task if not isinstance(task, str) else load_task_config(task)
    task = config.key
    total = resolve_dataset(config.dataset, config.dataset_file, opts.dataset).n
    if opts.limit is not None:
        total = min(total, opts.limit) if total is not None else opts.limit
    _ensure_env(get_card(model), opts.env)
    progress, opts.progress = _progress_bar(total, f"{model} × {task}")
    with _quiet_stdout(), progress:
        record = evaluate(model, config, opts)
    if wandb_mode != "disabled":
        from mlip_zoo.leaderboard.wandb_sink import log_run

        try:
            with _quiet_stdout():
                log_run(record, card=get_card(model), task_config=config, results_dir=opts.out, mode=wandb_mode)
        except Exception as exc:  # the result is already on disk; W&B is a copy
            err.print(f"[yellow]warning:[/] W&B logging failed for {model} × {task} ({_escape(str(exc))}); "
                      "the local result is intact", highlight=False)
    return record


def _ensure_env(card, mode: str) -> None:
    """Build the model's own environment first (if it needs one), with a spinner: pip takes a while."""
    from mlip_zoo.zoo.envs import ensure_environment, environment_for, needs_environment
    from mlip_zoo.zoo.weights import resolve_weights

    if needs_environment(card, mode) and not environment_for(card).built:
        resolve_weights(card)  # no weights, no point: fail as the evaluation would, before pip runs
        with err.status(f"building the environment of {card.key} ({', '.join(card.requires)}) …") as status:
            env, _ = ensure_environment(card, echo=lambda message: status.update(_escape(message)))
        err.print(f"[green]environment[/] {card.key}: {_escape(str(env.path))} "
                  f"({env.info()['build_seconds']:.0f} s)", highlight=False)


def _failed_checks(record: dict) -> str:
    from mlip_zoo.evaluators.base import load_task_config
    from mlip_zoo.evaluators.pipeline import label_check

    checked = label_check(load_task_config(record["task"]), record["model"], record["dataset"], record["metrics"])
    return "; ".join(c.describe() for c in checked or () if not c.ok)


def _summary(record: dict) -> str:
    from mlip_zoo.evaluators.base import load_task_config
    from mlip_zoo.evaluators.pipeline import label_check

    config = load_task_config(record["task"])
    checked = label_check(config, record["model"], record["dataset"], record["metrics"])
    if checked is not None:  # the model that made the labels: "exact within 1e-09", not a round-off figure
        if failed := _failed_checks(record):
            return "[red]pipeline check FAILED[/]: " + _escape(failed)
        tolerance = {f"{c.tolerance:.0e}" for c in checked}
        return f"pipeline check: {len(checked)} metrics exact within {'/'.join(sorted(tolerance))}"
    value = record["metrics"].get(config.headline)
    shown = "n/a" if value is None else f"{value:.4g}"
    interval = (record.get("intervals") or {}).get(config.headline)
    if interval:
        shown += f" [{interval[0]:.4g}, {interval[1]:.4g}]"
    if labeller := record["dataset"].get("labelled_by"):  # distance to EMT's labels, not a quality measure
        shown += f" vs {labeller}'s labels (pipeline check)"
    return f"{config.metrics[config.headline].label} = {shown}"


WandbOpt = Annotated[str, typer.Option("--wandb", help="offline (write the run under OUT/wandb; `wandb sync` later), online, or disabled.")]
WorkersOpt = Annotated[int, typer.Option(min=0, help="Dask worker processes on this machine; 0 runs in-process.")]
DeviceOpt = Annotated[str, typer.Option(help="auto (a GPU if torch sees one), cpu or cuda[:N].")]
EnvOpt = Annotated[str, typer.Option("--env", help="Where a card with `requires` runs: auto (its own environment when this "
                                     "one lacks its packages), isolated (always its own), shared (always here). "
                                     "See `mlipzoo env --help`.")]


def _env_mode(mode: str) -> str:
    if mode not in ("auto", "shared", "isolated"):
        raise _fail(ValueError(f"--env must be auto, shared or isolated, not {mode!r}"), 2)
    return mode


def _wandb_mode(mode: str) -> str:
    if mode not in ("offline", "online", "disabled"):
        raise _fail(ValueError(f"--wandb must be offline, online or disabled, not {mode!r}"), 2)
    return mode


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Argument(help="Model card key (mlipzoo models list).")],
    task: Annotated[str, typer.Argument(help="Task key (mlipzoo tasks list).")],
    dataset: Annotated[Optional[Path], typer.Option(help="Your own dataset file instead of the task's embedded one.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Results folder: writes OUT/MODEL/TASK.json and .parquet.")] = Path("results"),
    device: DeviceOpt = "cpu",
    workers: WorkersOpt = 1,
    scheduler: Annotated[Optional[str], typer.Option(help="Address of a running Dask scheduler to use.")] = None,
    cluster: Annotated[str, typer.Option(help="local, or slurm (via dask-jobqueue; needs --cluster-config).")] = "local",
    cluster_config: Annotated[Optional[Path], typer.Option(help="YAML of SLURMCluster arguments (+ jobs: N).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N structures (quick looks; recorded in the result).")] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow legacy OC20 LMDBs (unpickling runs code).")] = False,
    reference: Annotated[Optional[Path], typer.Option(help="ood-shift/ttr: your own labelled training set "
                                                           "(any dataset format) to measure shift against.")] = None,
    wandb: WandbOpt = "offline",
    env: EnvOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Evaluate one model on one task and write its result record.

    The dataset is streamed and cut into atom-balanced shards that run on Dask; each finished
    shard is saved, so rerunning the same command after an interruption resumes. Structures that
    fail (model error, NaN, element not covered) are listed in the result, never fatal.
    """
    from mlip_zoo.evaluators.runner import RunOptions

    opts = RunOptions(out=out_dir, dataset=dataset, device=device, workers=workers, scheduler=scheduler,
                      cluster=cluster, cluster_config=cluster_config, limit=limit, trust_pickle=trust_pickle,
                      env=_env_mode(env))
    try:
        record = _evaluate_one(model, _with_reference(task, reference) if reference else task, opts,
                               _wandb_mode(wandb))
    except MlipZooError as exc:
        raise _fail(exc) from None
    if as_json:
        return _emit_json(record)
    out.print(f"[green]done[/] {model} × {task}: {_summary(record)}  "
              f"({record['n_structures']} structures, {record['n_failed']} failed) -> "
              f"{_escape(str(opts.out / model / (task + '.json')))}", highlight=False)


@app.command("run")
def run(
    config: Annotated[Optional[Path], typer.Argument(help="Run config YAML (default: the embedded configs/default.yaml).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Results folder (overrides the config's).")] = None,
    device: DeviceOpt = "cpu",
    workers: Annotated[Optional[int], typer.Option(min=0, help="Dask workers (overrides the config's; 0 runs in-process).")] = None,
    site: Annotated[Path, typer.Option(help="Where to build the leaderboard site at the end.")] = Path("site"),
    wandb: Annotated[Optional[str], typer.Option("--wandb", help="offline, online or disabled (overrides the config's; default offline).")] = None,
    env: Annotated[Optional[str], typer.Option("--env", help="auto, isolated or shared (overrides the config's `env`; "
                                               "default auto): where models with `requires` run.")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Address of a running Dask scheduler to use.")] = None,
    cluster: Annotated[str, typer.Option(help="local, or slurm (via dask-jobqueue; needs --cluster-config).")] = "local",
    cluster_config: Annotated[Optional[Path], typer.Option(help="YAML of SLURMCluster arguments (+ jobs: N).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The main job: every model x task listed in the run config, a summary table, then the site.

    A failed (model, task) pair is reported and the others still run; rerunning resumes. Models
    whose packages conflict with this environment's run in their own (`mlipzoo env --help`), on
    Dask workers started from that environment's Python, kept for the whole run.
    """
    import yaml

    from mlip_zoo.errors import ClusterError
    from mlip_zoo.evaluators.runner import EnvClusters, RunOptions, cluster_client

    path = config or Path(str(__import__("importlib.resources").resources.files("mlip_zoo.configs") / "default.yaml"))
    try:
        plan = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise _fail(ValueError(f"{path}: cannot read run config: {exc}")) from None
    out_dir = out_dir or Path(plan.get("out", "results"))
    n_workers = workers if workers is not None else int(plan.get("workers", 1))
    wandb_mode = _wandb_mode(wandb or plan.get("wandb", "offline"))
    env_mode = _env_mode(env or plan.get("env", "auto"))
    records, errors = [], []
    where = {"scheduler": scheduler, "cluster": cluster, "cluster_config": cluster_config}
    with cluster_client(RunOptions(workers=n_workers, **where)) as client, \
            EnvClusters(RunOptions(workers=n_workers, **where)) as envs:
        for block in plan.get("runs", []):
            for model in block["models"]:
                for task in block["tasks"]:
                    opts = RunOptions(out=out_dir, device=device, workers=n_workers, limit=block.get("limit"),
                                      client=client, env=env_mode, env_clusters=envs, **where)
                    try:
                        config = _with_options(task, block["options"]) if block.get("options") else task
                        records.append(record := _evaluate_one(model, config, opts, wandb_mode))
                        if failed := _failed_checks(record):  # the labeller missed its own labels: a broken pipeline
                            errors.append({"model": model, "task": task, "error": "pipeline check failed: " + failed})
                    except ClusterError as exc:  # the cluster is gone: every other pair would fail the same way
                        raise _fail(exc) from None
                    except Exception as exc:  # keep going: one broken pair must not cost the others
                        errors.append({"model": model, "task": task, "error": f"{type(exc).__name__}: {exc}"})
                        err.print(f"[red]failed[/] {model} × {task}: {_escape(str(exc))}", highlight=False)
    index = _build_site(out_dir, site)
    if as_json:
        _emit_json({"results": records, "errors": errors, "site": str(index.resolve())})
    else:
        table = Table(title=f"mlip-zoo run ({path.name}) -> {out_dir}")
        for col in ("model", "task", "headline", "structures", "failed", "wall s"):
            table.add_column(col)
        for r in records:
            table.add_row(r["model"], r["task"], _summary(r), str(r["n_structures"]), str(r["n_failed"]),
                          f"{r['provenance']['wall_time_s']:.1f}")
        for e in errors:
            table.add_row(e["model"], e["task"], "[red]error[/]", "-", "-", "-")
        out.print(table)
        out.print(f"[green]leaderboard[/] file://{_escape(str(index.resolve()))}", highlight=False)
    if errors:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
