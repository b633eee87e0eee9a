"""``mlipzoo models``: list, show, fetch and smoke-check model cards."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer
from rich.table import Table

from mlip_zoo.cli.common import JsonOpt, card_or_fail, emit_json, err, escape, fail, load_cards_or_fail, out, \
    quiet_stdout
from mlip_zoo.errors import MlipZooError

app = typer.Typer(help="Model cards: list, inspect, download and smoke-test the zoo.", no_args_is_help=True)


@app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """List every model card (built-in and from MLIPZOO_CARDS) with where its weights stand.

    Weights status: [green]local[/] (verified copy on disk or in an installed package), [green]none[/]
    (needs no weights), [yellow]download[/] (fetch from the Hub/URL first), [red]unavailable[/]
    (no public checkpoint).
    """
    from mlip_zoo.zoo.weights import local_status

    rows = []
    for card in load_cards_or_fail().values():
        rows.append({"key": card.key, "name": card.name, "version": card.version, "family": card.family,
                     "targets": card.targets, "license": card.license, "training_sets": card.training_sets,
                     "weights": local_status(card), "lifecycle": card.lifecycle,
                     "card": str(card.path)})
    if as_json:
        return emit_json(rows)
    table = Table(title=f"{len(rows)} model cards")
    for col in ("key", "family", "targets", "training data", "license", "weights"):
        table.add_column(col)
    colour = {"local": "green", "none": "green", "download": "yellow", "unavailable": "red"}
    for r in rows:
        table.add_row(r["key"], r["family"], r["targets"], ", ".join(r["training_sets"]) or "-", r["license"],
                      f"[{colour[r['weights']]}]{r['weights']}[/]")
    out.print(table)


@app.command("show")
def models_show(
    key: Annotated[str, typer.Argument(help="Card key, e.g. chgnet-0.3.0")],
    as_json: JsonOpt = False,
    matbench: Annotated[bool, typer.Option("--matbench", help="Print the card in matbench-discovery's model-card keys.")] = False,
) -> None:
    """Show one model card in full."""
    card = card_or_fail(key)
    data = card.to_matbench_discovery() if matbench else {**card.model_dump(mode="json", exclude_defaults=True),
                                                          "card_file": str(card.path)}
    if as_json or matbench:
        return emit_json(data)
    import yaml
    out.print(escape(yaml.safe_dump(data, sort_keys=False, allow_unicode=True)), highlight=False)


@app.command("fetch")
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

    cards = load_cards_or_fail()
    selected = ([c for c in cards.values() if c.available and c.weight_files] if all_
                else [card_or_fail(k) for k in keys or []])
    if not selected:
        raise fail(ValueError("name at least one card key, or pass --all"), 2)
    results, failed = [], 0
    for card in selected:
        try:
            files = resolve_weights(card)
            results.append({"model": card.key, "ok": True, "files": [
                {"filename": f.filename, "path": str(f.path), "sha256": f.sha256, "source": f.source,
                 "pinned": f.pin_message(card)} for f in files.values()]})
        except MlipZooError as exc:
            failed += 1
            results.append({"model": card.key, "ok": False, "error": str(exc)})
    if as_json:
        emit_json(results)
    else:
        for r in results:
            if r["ok"]:
                for f in r["files"]:
                    out.print(f"[green]ok[/] {r['model']}: {f['filename']} ({f['source']}) sha256 {f['sha256'][:12]}… "
                              f"{escape(f['path'])}", highlight=False)
                    if f["pinned"]:  # trust on first use: say what was trusted and how to commit it
                        out.print(f"[yellow]{escape(f['pinned'])}[/]", highlight=False)
            else:
                err.print(f"[red]failed[/] {escape(r['error'])}", highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command("check")
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

    cards = load_cards_or_fail()
    if all_:
        selected = [c for c in cards.values() if local_status(c) in ("local", "none")]
    else:
        selected = [card_or_fail(k) for k in keys or []]
    if not selected:
        raise fail(ValueError("name at least one card key, or pass --all"), 2)
    reports = []
    with quiet_stdout(), err.status("") as status:
        for card in selected:
            status.update(f"checking {card.key} …")
            try:
                t0 = time.perf_counter()
                potential = load_potential(card, device=device)
                reports.append(smoke_check(potential, time.perf_counter() - t0).as_dict())
            except Exception as exc:  # one model's failure must not hide the others' results
                reports.append({"model": card.key, "ok": False, "problems": [f"{type(exc).__name__}: {exc}"]})
    if as_json:
        emit_json(reports)
    else:
        table = Table(title="model check")
        for col in ("model", "result", "cell", "E/atom (eV)", "max |F| (eV/Å)", "|ΣF| (eV/Å)", "stress", "load s", "predict s"):
            table.add_column(col)
        for r in reports:
            if "energy" not in r:
                table.add_row(r["model"], "[red]FAIL[/]", escape("; ".join(r["problems"]))[:200])
                continue
            table.add_row(r["model"], "[green]ok[/]" if r["ok"] else "[red]FAIL[/] " + escape("; ".join(r["problems"])),
                          r["structure"].removeprefix("check-"), f"{r['energy_per_atom']:.4f}",
                          f"{r['max_force']:.4f}", f"{r['net_force']:.1e}",
                          "yes" if r["stress"] is not None else "-", f"{r['seconds_load']:.2f}",
                          f"{r['seconds_predict']:.3f}")
        out.print(table)
    if not all(r["ok"] for r in reports):
        raise typer.Exit(1)
