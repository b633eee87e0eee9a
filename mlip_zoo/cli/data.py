"""``mlipzoo data``: fetch reference datasets too big to ship (OC20's evaluation splits, Matbench
Discovery's WBM files)."""

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
    name: Annotated[str, typer.Argument(help="Dataset to fetch: `oc20` (OC20's S2EF validation splits or its IS2RE/IS2RS "
                                             "LMDBs, with --split) or `wbm` (Matbench Discovery's WBM + MP files).")],
    directory: Annotated[Optional[Path], typer.Option(
        "--dir", help="Where to put the files (oc20/ or matbench-discovery's wbm/, mp/ below it). "
                      "Default: $MLIPZOO_DATA or ~/.cache/mlip-zoo/data.")] = None,
    split: Annotated[Optional[str], typer.Option(
        "--split", help="oc20: val_id, val_ood_ads, val_ood_cat, val_ood_both (S2EF, ~1M frames and 1.7-1.9 GB "
                        "each), or is2re (the IS2RE/IS2RS LMDBs of every split: 8.1 GB, 97 GB unpacked).")] = None,
    files: Annotated[Optional[list[str]], typer.Option(
        "--file", help="wbm: only these files (repeatable), e.g. --file wbm_summary.")] = None,
    mirror: Annotated[Optional[str], typer.Option(
        "--mirror", help="Base URL of a copy with the same relative paths: oc20's file names "
                         "(s2ef_val_id.tar...) or matbench-discovery's data/ paths. Default: the official URLs.")] = None,
    keep_archive: Annotated[bool, typer.Option(
        "--keep-archive", help="oc20: keep the tarball after unpacking it (default: delete it).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Download a reference dataset, check every file, and say how to evaluate on it.

    oc20: the tarball OC20 publishes for the split, checked against its published md5 and against
    the sha256 its first download pinned in <dir>/oc20/downloads.lock, then unpacked safely (no
    absolute paths, `..` or links) as published: `mlipzoo eval MODEL oc20-s2ef --dataset FOLDER`
    reads the N.extxyz.xz + N.txt.xz pairs directly. A download cut short resumes when you run the
    same command again.

    wbm: the Matbench Discovery files from figshare, checked against their published md5; then
    `mlipzoo eval MODEL discovery --dataset DIR`.

    Where the network is unreachable, this says so and prints each file's URL and target path, so
    you can fetch them elsewhere and copy them in.
    """
    if name not in ("oc20", "wbm"):
        raise fail(MlipZooError(f"unknown dataset {name!r}; known: oc20, wbm"))
    if name == "oc20" and (split is None or files):
        from mlip_zoo.evaluators.oc20.fetch import ARCHIVES

        raise fail(MlipZooError(f"oc20 needs --split, one of {', '.join(ARCHIVES)} (and takes no --file)"), code=2)
    if name == "wbm" and split is not None:
        raise fail(MlipZooError("wbm takes no --split (use --file to fetch some of its files)"), code=2)
    target = (directory or _default_data_dir()).expanduser()
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), console=err,
                  disable=as_json) as bar:
        tasks: dict[str, int] = {}

        def on_progress(key: str, done: int, total: int | None) -> None:
            if key not in tasks:
                tasks[key] = bar.add_task(key, total=total)
            bar.update(tasks[key], completed=done, total=total)

        if name == "oc20":
            _fetch_oc20(split, target, mirror, keep_archive, as_json, lambda d, t: on_progress(split, d, t),
                        lambda d, t: on_progress(f"unpack {split}", d, t))
        else:
            _fetch_wbm(target, files, mirror, as_json, on_progress)


def _fetch_oc20(split: str, target: Path, mirror: str | None, keep_archive: bool, as_json: bool, on_progress,
                on_unpack) -> None:
    from mlip_zoo.evaluators.oc20.fetch import ARCHIVES, fetch, url_of

    try:
        report = fetch(split, target, mirror=mirror, keep_archive=keep_archive, on_progress=on_progress,
                       on_unpack=on_unpack)
    except MlipZooError as exc:
        if not as_json:
            err.print("OC20 files, their targets and published md5 (fairchem's DATASET.md):", highlight=False)
            for archive in ARCHIVES.values():
                err.print(f"  {archive.split}: {url_of(archive, mirror)} -> {target / 'oc20' / archive.filename} "
                          f"(md5 {archive.md5})", highlight=False)
        raise fail(exc) from None
    if as_json:
        return emit_json(report)
    out.print(f"{split}: {report['status']} into {escape(report['dir'])} (md5 {report['md5']}, sha256 {report['sha256']})",
              highlight=False)
    for folder in report["datasets"]:
        out.print(f"Next: mlipzoo eval MODEL {report['task']} --dataset {escape(folder)}"
                  + (" --trust-pickle" if report["task"] != "oc20-s2ef" else ""), highlight=False)


def _fetch_wbm(target: Path, files: list[str] | None, mirror: str | None, as_json: bool, on_progress) -> None:
    from mlip_zoo.evaluators.discovery.wbm import WBM_FILES, fetch

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
