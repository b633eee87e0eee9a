"""What every command shares: the two consoles, failing with a message, ``--json`` output, and
the card look-ups that fail the command cleanly."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Annotated

import typer
from rich.console import Console

from mlip_zoo.errors import MlipZooError

# Long paths and messages stay on one line (grep-able). Written to a log or a pipe, rich would cut
# tables to 80 columns: there the consoles are wide instead.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


def fail(exc: Exception, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
    return typer.Exit(code)


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape
    return rich_escape(text)


def emit_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def quiet_stdout():
    """Model packages print banners to stdout ("CHGNet will run on cpu"); send them to stderr so
    stdout carries only our output and ``--json`` stays parseable."""
    return contextlib.redirect_stdout(sys.stderr)


def load_cards_or_fail():
    from mlip_zoo.zoo.card import load_cards
    try:
        return load_cards()
    except MlipZooError as exc:
        raise fail(exc) from None


def card_or_fail(key: str):
    from mlip_zoo.zoo.card import get_card
    try:
        return get_card(key, load_cards_or_fail())
    except MlipZooError as exc:
        raise fail(exc) from None
