"""Fetching OC20's evaluation data: the S2EF validation splits and the IS2RE/IS2RS LMDB bundle.

The files and their md5 sums are the ones OC20 publishes (fairchem's ``DATASET.md``; the URLs are
those of fairchem's ``core/scripts/download_data.py``). Each tarball is downloaded to
``<dir>/oc20/`` (resumable, md5-checked, its sha256 pinned in ``<dir>/oc20/downloads.lock`` by the
first download so a later copy, from a mirror say, must be the same bytes; a tarball already there,
copied in by hand, is checked the same way instead), then unpacked there
without a conversion step: the S2EF pairs stay ``N.extxyz.xz`` + ``N.txt.xz`` and are read as they
are (``raw.py``); the IS2RE bundle's LMDBs are read with ``--trust-pickle``.

Unpacking refuses absolute paths, ``..``, and links or devices (tarfile's ``data`` filter) and
happens in a scratch folder whose entries are renamed into place once complete, so a folder is
either whole or absent. ``<archive name>.fetched.json`` records where it came from, its checksums
and what it unpacked; a split with that record is not fetched again.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from mlip_zoo.errors import DatasetError, DownloadChecksumError, DownloadError
from mlip_zoo.evaluators.oc20.raw import is_s2ef_raw
from mlip_zoo.zoo.download import download, verify

BASE_URL = "https://dl.fbaipublicfiles.com/opencatalystproject/data/"
LOCK = "downloads.lock"


@dataclass(frozen=True)
class Archive:
    split: str  # what --split says
    filename: str  # under BASE_URL, and under a --mirror
    md5: str  # published in fairchem's DATASET.md
    frames: int | None  # S2EF frames (fairchem's S2EF_COUNTS); None for the LMDB bundle
    task: str  # the task to evaluate on it

    @property
    def name(self) -> str:
        return self.filename.split(".")[0]


ARCHIVES: dict[str, Archive] = {a.split: a for a in (
    Archive("val_id", "s2ef_val_id.tar", "f57f7f5c1302637940f2cc858e789410", 999_866, "oc20-s2ef"),
    Archive("val_ood_ads", "s2ef_val_ood_ads.tar", "431ab0d7557a4639605ba8b67793f053", 999_838, "oc20-s2ef"),
    Archive("val_ood_cat", "s2ef_val_ood_cat.tar", "532d6cd1fe541a0ddb0aa0f99962b7db", 999_809, "oc20-s2ef"),
    Archive("val_ood_both", "s2ef_val_ood_both.tar", "5731862978d80502bbf7017d68c2c729", 999_944, "oc20-s2ef"),
    Archive("is2re", "is2res_train_val_test_lmdbs.tar.gz", "cfc04dd2f87b4102ab2f607240d25fb1", None, "oc20-is2re"),
)}


def url_of(archive: Archive, mirror: str | None = None) -> str:
    return (mirror.rstrip("/") + "/" if mirror else BASE_URL) + archive.filename


def _datasets(tops: list[Path], archive: Archive) -> list[Path]:
    """The folders a task reads inside what an archive unpacked: S2EF pair folders, or LMDB folders."""
    inside = [p for top in tops if top.is_dir() for p in (top, *top.rglob("*"))]
    if archive.frames is not None:
        return sorted(p for p in inside if p.is_dir() and is_s2ef_raw(p))
    return sorted({p.parent for p in inside if p.name.endswith(".lmdb")})


def _unpack(tarball: Path, root: Path, on_progress=None) -> list[str]:
    """Unpack into ``root`` through a scratch folder beside the archive, refusing unsafe members;
    the names of the top-level entries it made (each replaces an older one of its name).
    ``on_progress(done, total)`` hears the archive bytes read so far, member by member."""
    scratch = root / f".{tarball.name}.unpacking"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    total = tarball.stat().st_size
    try:
        with open(tarball, "rb") as raw, tarfile.open(fileobj=raw) as tar:
            for member in tar:
                tar.extract(member, scratch, filter="data")  # no absolute paths, no .., no links out, no devices
                if on_progress:
                    on_progress(raw.tell(), total)
            if on_progress:
                on_progress(total, total)
    except (tarfile.TarError, OSError, EOFError) as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise DatasetError(f"{tarball}: cannot unpack ({type(exc).__name__}: {exc}); nothing was kept. Delete the "
                           "archive and fetch it again") from None
    tops = sorted(p.name for p in scratch.iterdir())
    for name in tops:
        final = root / name
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        elif final.exists() or final.is_symlink():
            final.unlink()
        os.replace(scratch / name, final)
    scratch.rmdir()
    return tops


def fetch(split: str, directory: Path, *, mirror: str | None = None, keep_archive: bool = False,
          timeout: float = 60.0, on_progress=None, on_unpack=None) -> dict:
    """Download, verify and unpack one OC20 archive under ``directory/oc20``; returns what was
    done and the dataset folders to give ``--dataset``. ``on_progress(done, total)`` hears the
    download's bytes, ``on_unpack(done, total)`` the archive's bytes unpacked."""
    if split not in ARCHIVES:
        raise DatasetError(f"unknown OC20 split {split!r}; known: {', '.join(ARCHIVES)}")
    archive = ARCHIVES[split]
    root = Path(directory).expanduser() / "oc20"
    record = root / f"{archive.name}.fetched.json"
    tarball, url = root / archive.filename, url_of(archive, mirror)
    done = json.loads(record.read_text()) if record.exists() else {}
    if done.get("md5") == archive.md5 and done.get("unpacked") and all((root / n).exists() for n in done["unpacked"]):
        status = "present"
    else:
        try:
            if tarball.exists():  # a copy put there by hand (or kept with --keep-archive): checked the same way
                got = {**verify(tarball, md5=archive.md5, lock=root / LOCK, key=archive.filename), "status": "local"}
            else:
                got = download(url, tarball, md5=archive.md5, lock=root / LOCK, key=archive.filename,
                               timeout=timeout, on_progress=on_progress)
        except DownloadChecksumError as exc:
            raise DatasetError(str(exc)) from None
        except DownloadError as exc:
            raise DatasetError(f"{exc}. Where this machine cannot reach it, download {url} where the network allows "
                               f"(md5 {archive.md5}) and copy it to {tarball}, or give --mirror a copy") from None
        status = got["status"]
        done = {"split": split, "url": url, "md5": got["md5"], "sha256": got["sha256"], "pinned": got["pinned"],
                "unpacked": _unpack(tarball, root, on_unpack)}
        record.write_text(json.dumps(done, indent=2, sort_keys=True) + "\n")
        if not keep_archive:
            tarball.unlink()
    found = _datasets([root / n for n in done["unpacked"]], archive)
    if not found:
        raise DatasetError(f"{tarball.name} unpacked no {'S2EF pair folder' if archive.frames else 'LMDB file'} "
                           f"into {root}; is {url} the right file?")
    return {"split": split, "status": status, "url": url, "md5": done["md5"], "sha256": done["sha256"],
            "pinned": bool(done.get("pinned")), "dir": str(root), "unpacked": done["unpacked"],
            "datasets": [str(p) for p in found], "task": archive.task, "expected_frames": archive.frames,
            "archive": str(tarball) if tarball.exists() else None}
