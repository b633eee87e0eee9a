"""Downloading one file over HTTP(S): resumable, checksummed, atomic. Weights and datasets alike
come through here.

Bytes go to ``<target>.part``. A download cut short (a dropped connection, a killed process)
leaves the ``.part`` in place and the next call resumes it with an HTTP ``Range`` request; a server
that ignores ranges sends the whole file again, which is then written from the start. The
finished file is checked against every checksum known for it (a published md5 or sha256, or the
sha256 pinned in a lock file by its first download, trust on first use as ``weights.lock`` does
for weights) and only then renamed to ``target``; a mismatch deletes it and names both values.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from mlip_zoo.errors import DownloadChecksumError, DownloadError

CHUNK = 1 << 20
Progress = Callable[[int, int | None], None]  # (bytes on disk, total bytes or None)


def digests(path: Path) -> dict[str, str]:
    """md5 and sha256 of a file, in one read."""
    md5, sha256 = hashlib.md5(), hashlib.sha256()  # md5: what some publishers list; never trusted alone
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            md5.update(block)
            sha256.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def read_lock(lock: Path) -> dict[str, dict]:
    if not lock.exists():
        return {}
    try:
        return json.loads(lock.read_text())
    except json.JSONDecodeError as exc:
        raise DownloadChecksumError(f"{lock}: lock file is not valid JSON ({exc}); restore it rather than "
                                    "deleting it, since it holds the checksums of earlier downloads") from None


def _pin(lock: Path, key: str, entry: dict) -> None:
    from mlip_zoo.zoo.weights import atomic_write_text

    data = read_lock(lock)
    data[key] = entry
    atomic_write_text(lock, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": "mlip-zoo"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _transfer(url: str, part: Path, timeout: float, on_progress: Progress | None) -> str:
    """Fill ``part`` with the file at ``url``, resuming what is there; 'downloaded' or 'resumed'."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing past our bytes: the .part is whole; the checksum decides
            return "resumed"
        raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"cannot download {url}: {getattr(exc, 'reason', exc)}") from None
    with response:
        resumed = offset > 0 and response.status == 206 and \
            (response.headers.get("Content-Range") or "").startswith(f"bytes {offset}-")
        offset = offset if resumed else 0  # a 200 answer is the whole file: start again
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        done = offset
        try:
            with open(part, "ab" if resumed else "wb") as out:
                while block := response.read(CHUNK):
                    out.write(block)
                    done += len(block)
                    if on_progress:
                        on_progress(done, total)
        except (OSError, http.client.HTTPException, TimeoutError) as exc:
            of = f" of {total}" if total else ""
            raise DownloadError(f"download of {url} stopped after {done}{of} bytes ({type(exc).__name__}: {exc}); "
                                f"the partial file {part} is kept: run the same command again to resume it") from None
    if total is not None and done < total:  # the server closed early without an error
        raise DownloadError(f"download of {url} stopped after {done} of {total} bytes; the partial file {part} "
                            "is kept: run the same command again to resume it")
    return "resumed" if resumed else "downloaded"


def verify(path: Path, *, md5: str | None = None, sha256: str | None = None, lock: Path | None = None,
           key: str | None = None, source: str | None = None) -> dict:
    """Check a file against its published ``md5``/``sha256`` and the sha256 pinned for ``key`` in
    ``lock``, pinning its sha256 there when neither is known (trust on first use). Returns
    ``{md5, sha256, pinned}``; a mismatch deletes the file and raises DownloadChecksumError
    naming ``source`` (its URL), both values and the fix."""
    source = source or str(path)
    pinned = read_lock(lock).get(key or source, {}).get("sha256") if lock is not None else None
    got = digests(path)
    expected = [("md5", md5, "the published"), ("sha256", sha256, "the published"),
                ("sha256", pinned, f"the one its first download pinned in {lock}")]
    for algorithm, value, whose in expected:
        if value and got[algorithm] != value.lower():
            path.unlink(missing_ok=True)
            fix = (f" If the file changed upstream on purpose, delete the entry {key or source!r} in {lock} and "
                   "fetch again to pin the new one." if value is pinned else "")
            raise DownloadChecksumError(f"{source}: {algorithm} {got[algorithm]} differs from {whose} {value}: the "
                                        f"file is corrupt or was tampered with; nothing was kept.{fix}")
    new_pin = lock is not None and not sha256 and not pinned
    if new_pin:
        _pin(lock, key or source, {"url": source, "sha256": got["sha256"], "md5": got["md5"],
                                   "pinned": time.strftime("%Y-%m-%d", time.gmtime())})
    return {**got, "pinned": new_pin}


def download(url: str, target: Path, *, md5: str | None = None, sha256: str | None = None,
             lock: Path | None = None, key: str | None = None, timeout: float = 60.0,
             on_progress: Progress | None = None) -> dict:
    """Download ``url`` to ``target`` and ``verify`` it (published ``md5``/``sha256``, the sha256
    pinned for ``key`` in ``lock``). Returns ``{path, status, md5, sha256, pinned}``; ``status`` is
    'downloaded' or 'resumed'. Raises DownloadError (partial file kept) or DownloadChecksumError
    (nothing kept)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    status = _transfer(url, part, timeout, on_progress)
    got = verify(part, md5=md5, sha256=sha256, lock=lock, key=key, source=url)
    os.replace(part, target)
    return {"path": str(target), "status": status, **got}
