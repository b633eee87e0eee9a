"""``mlipzoo leaderboard``: build the static site (``mlipzoo run`` builds it too)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlip_zoo.cli.common import escape, fail, out
from mlip_zoo.errors import MlipZooError

app = typer.Typer(help="The static leaderboard site.", no_args_is_help=True)


@app.command("build")
def leaderboard_build(
    results: Annotated[Path, typer.Option(help="Results folder (OUT of mlipzoo eval/run).")] = Path("results"),
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write the site.")] = Path("site"),
) -> None:
    """Render the static site: a sortable table with a reader-weighted combined score, a page per
    model and per task with plots. Works from file:// with no network."""
    index = build_site_or_fail(results, out_dir)
    out.print(f"[green]site[/] {escape(str(index))}", highlight=False)


def build_site_or_fail(results: Path, out_dir: Path) -> Path:
    from mlip_zoo.leaderboard.site import build_site

    if not results.is_dir():
        raise fail(ValueError(f"{results}: no results folder; run `mlipzoo eval` or `mlipzoo run` first"))
    try:
        return build_site(results, out_dir)
    except MlipZooError as exc:
        raise fail(exc) from None
