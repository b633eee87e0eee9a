"""``mlipzoo submit``: scaffold a model card from the answers to the card wizard's questions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlip_zoo.cli.common import err, escape, out
from mlip_zoo.errors import MlipZooError


def submit(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write <key>.yaml into.")] = Path("configs/models"),
) -> None:
    """Scaffold a model card by answering questions, then validate it.

    Next steps are printed: fetch and check the weights, evaluate, and open a pull request with
    the card and its results (CONTRIBUTING.md walks through it).
    """
    import yaml

    from mlip_zoo.zoo.card import read_card
    from mlip_zoo.zoo.card_wizard import ask_card

    def ask(question: str, default: str | None = None, show_default: bool = True) -> str:
        return typer.prompt(question, default=default, show_default=show_default)

    card = ask_card(ask, tell=lambda message: err.print(message, highlight=False, markup=False))
    key = card["key"]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{key}.yaml"
    if path.exists() and not typer.confirm(f"{path} exists; overwrite?", default=False):
        raise typer.Exit(1)
    path.write_text(yaml.safe_dump(card, sort_keys=False, allow_unicode=True))
    try:
        read_card(path)
    except MlipZooError as exc:
        err.print(f"[red]The card was written but is not valid yet:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    out.print(f"[green]wrote[/] {escape(str(path))}\nNext: mlipzoo models fetch {key} && mlipzoo models check {key}"
              f" && mlipzoo eval {key} oc20-s2ef; then open a pull request with the card and results/{key}/.",
              highlight=False)
