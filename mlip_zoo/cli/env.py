"""``mlipzoo env``: build, list and remove the per-model Python environments."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from mlip_zoo.cli.common import JsonOpt, card_or_fail, emit_json, err, escape, fail, load_cards_or_fail, out
from mlip_zoo.errors import MlipZooError

app = typer.Typer(
    help="Per-model Python environments, for model families whose pins conflict (mace-torch needs e3nn 0.4.4, "
         "SevenNet e3nn>=0.5).\n\nA card's `requires` (and optional `python`) define its environment: a venv under "
         "MLIPZOO_ENVS (default ~/.cache/mlip-zoo/envs) whose own packages come first, layered over this one's "
         "(torch, mlip-zoo, dask). `mlipzoo eval`/`run` build and use it as needed (--env); these commands manage "
         "them. Set MLIPZOO_ENVS to a shared filesystem for SLURM.",
    no_args_is_help=True)


@app.command("create")
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
        card = card_or_fail(key)
        if not (card.requires or card.python):
            rows.append({"key": key, "ok": False, "error": f"{key}: its card has no `requires`, so it runs in "
                                                           "mlip-zoo's own environment"})
            failed = True
            continue
        try:
            with err.status(f"environment of {key} …") as status:
                env, built = ensure_environment(card, echo=lambda message: status.update(escape(message)))
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
        emit_json(rows)
    else:
        for r in rows:
            if r["ok"]:
                verb = f"built in {r['build_seconds']:.0f} s" if r["built"] else "reused"
                out.print(f"[green]{verb}[/] {r['key']}: {escape(r['path'])}", highlight=False)
            else:
                err.print(f"[red]failed[/] {escape(r['error'])}", highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command("list")
def env_list(as_json: JsonOpt = False) -> None:
    """Every built environment: current (matches its card and this mlip-zoo), stale, or orphaned (no card)."""
    from mlip_zoo.zoo.envs import envs_dir, list_environments

    rows = list_environments(load_cards_or_fail())
    if as_json:
        return emit_json(rows)
    table = Table(title=f"{len(rows)} environments in {envs_dir()}")
    for col in ("key", "hash", "state", "requires", "built", "MB"):
        table.add_column(col)
    colour = {"current": "green", "stale": "yellow", "orphaned": "red"}
    for r in rows:
        table.add_row(r["key"], r["hash"], f"[{colour[r['state']]}]{r['state']}[/]", ", ".join(r["requires"]),
                      r["created"], f"{r['size_mb']:.0f}")
    out.print(table)


@app.command("remove")
def env_remove(
    keys: Annotated[Optional[list[str]], typer.Argument(help="Card keys whose environments to delete.")] = None,
    stale: Annotated[bool, typer.Option("--stale", help="Only environments no longer current for their card.")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Every environment.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete environments (they are rebuilt when next needed)."""
    from mlip_zoo.zoo.envs import remove_environments

    if not (keys or stale or all_):
        raise fail(ValueError("name card keys, or pass --stale or --all"), 2)
    removed = remove_environments(keys or None, stale_only=stale, cards=load_cards_or_fail())
    if as_json:
        return emit_json({"removed": removed})
    for path in removed:
        out.print(f"removed {escape(path)}", highlight=False)
    out.print(f"{len(removed)} environment(s) removed")
