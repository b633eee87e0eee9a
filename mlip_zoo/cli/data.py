"""``mlipzoo data``: fetch reference datasets too big to ship (Matbench Discovery's WBM files)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mlip_zoo.cli.common import JsonOpt, emit_json, err, escape, fail, out
from mlip_zoo.errors import MlipZooError

app = typer.Typer(help="Reference datasets that are too big to ship: fetch them where the network allows.",
                  no_args_is_help=True)


def _default_data_dir() -> Path:
    import os

    return Path(os.environ.get("MLIPZOO_DATA", Path.home() / ".cache" / "mlip-zoo" / "data"))


@app.command("fetch")
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
        raise fail(MlipZooError(f"unknown dataset {name!r}; known: wbm"))
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
            raise fail(exc) from None
    if as_json:
        return emit_json({"dir": str(target), "files": report})
    for key, entry in report.items():
        out.print(f"{key}: {entry['status']} {escape(entry['path'])}", highlight=False)
    out.print(f"Next: mlipzoo eval MODEL discovery --dataset {escape(str(target))}", highlight=False)
