"""Getting a card's weight files onto disk, verified.

Every file is identified by its sha256 (from the card, or pinned in ``weights.lock`` beside the
card by its first download). Because of that, any local copy with the right hash *is* the file:
local copies (the Hub cache, our URL cache, a package-shipped mirror) are tried before the
network, then the Hugging Face Hub at the pinned revision, then URL mirrors. A copy whose hash
differs is moved to quarantine (or, inside an installed package, refused) and never loaded.

Settings are read from the environment when used, never at import:
``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` / ``MLIPZOO_OFFLINE``, ``HF_HUB_CACHE`` / ``HF_HOME``,
``MLIPZOO_CACHE``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mlip_zoo.errors import ChecksumMismatchError, WeightsNotAvailableError
from mlip_zoo.zoo.card import ModelCard, PackageMirror, UrlMirror, WeightFile
from mlip_zoo.zoo.checkpoints import checkpoint_hazard

LOCK_NAME = "weights.lock"
_TRUE = {"1", "true", "yes", "on"}

# ---------------------------------------------------------------------------------------------
# Settings


def offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "MLIPZOO_OFFLINE"))


def cache_dir() -> Path:
    root = os.environ.get("MLIPZOO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mlip-zoo")
    return Path(root)


def _hub_cache_dir() -> str | None:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None  # huggingface_hub's own default


def _hub_endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


# ---------------------------------------------------------------------------------------------
# Hashing, lock file, quarantine


_HASHED: dict[tuple, str] = {}


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """The file's sha256, computed once per process: the result is kept under the file's identity
    and state (device, inode, size, mtime, ctime), so a file that is rewritten or replaced is
    hashed again. A run asks for the same weights and dataset several times (card checks, the
    plan, the environment); multi-GB files are read once. A file changed in the last two seconds
    is never remembered: a rewrite within the clock's granularity would keep its timestamps."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        key = (str(Path(path).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key in _HASHED:
            return _HASHED[key]
        h = hashlib.sha256()
        while block := f.read(chunk):
            h.update(block)
    if time.time() - max(st.st_mtime, st.st_ctime) > 2.0:
        _HASHED[key] = h.hexdigest()
    return h.hexdigest()


def lock_path(card: ModelCard) -> Path | None:
    """``weights.lock`` in the card's own directory (None for a card built in code)."""
    return card.path.parent / LOCK_NAME if card.path else None


def read_lock(card: ModelCard) -> dict[str, dict[str, str]]:
    path = lock_path(card)
    if path is None or not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ChecksumMismatchError(f"{path}: weights lock is not valid JSON ({exc}); "
                                    "restore it from git rather than deleting it") from exc
    return data.get(card.key, {})


def _write_lock(card: ModelCard, filename: str, entry: dict[str, str]) -> None:
    path = lock_path(card)
    if path is None:
        return
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(card.key, {})[filename] = entry
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; results and locks are meant to be shared
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def quarantine(path: Path, reason: str) -> Path:
    """Move a bad file out of every cache so it can never be loaded, keeping it for inspection."""
    qdir = cache_dir() / "quarantine"
    qdir.mkdir(parents=True, exist_ok=True)
    real = path.resolve()
    dest = qdir / f"{int(time.time())}-{real.name}"
    shutil.move(str(real), dest)
    if path.is_symlink():  # the Hub cache links snapshots/<rev>/<file> to blobs/<etag>
        path.unlink()
    dest.with_name(dest.name + ".reason").write_text(reason + "\n")
    return dest


# ---------------------------------------------------------------------------------------------
# Resolution


@dataclass(frozen=True)
class ResolvedFile:
    filename: str
    path: Path
    sha256: str
    source: str  # "hub-cache", "hub", "url-cache", "url", "package"
    url: str | None = None  # the URL a "url" download came from
    pinned: dict | None = None  # the lock entry this resolution wrote (trust on first use), else None

    def pin_message(self, card: ModelCard) -> str | None:
        """What a first download pinned, and how to make the pin part of the card."""
        if not self.pinned:
            return None
        where = f"from {self.pinned['url']}" if "url" in self.pinned else \
            f"at commit {self.pinned.get('revision', '?')}"
        return (f"pinned {card.key}/{self.filename} {where}: sha256 {self.sha256} in {lock_path(card)} "
                f"(trust on first use: later loads verify against it and refuse changed bytes). To make it "
                f"part of the card, add `sha256: {self.sha256}` to this file's entry in "
                f"{card.path or 'the card'} and commit it (or commit {LOCK_NAME}).")


class _Attempts:
    """What each source said, so a final failure can list them all."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, source: str, outcome: str) -> None:
        self.lines.append(f"  - {source}: {outcome}")


def _today() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).date().isoformat()


def resolve_weights(card: ModelCard, *, allow_network: bool | None = None) -> dict[str, ResolvedFile]:
    """Every weight file of ``card`` as a verified local path, keyed by filename."""
    if not card.available:
        raise WeightsNotAvailableError(
            f"{card.key}: no public weights ({card.unavailable_reason}). "
            "This card is listed for completeness; it cannot be evaluated.")
    network = (not offline()) if allow_network is None else allow_network
    lock = read_lock(card)
    return {wf.filename: _resolve_one(card, wf, lock.get(wf.filename, {}), network) for wf in card.weight_files}


def _resolve_one(card: ModelCard, wf: WeightFile, locked: dict[str, str], network: bool) -> ResolvedFile:
    expected = wf.sha256 or locked.get("sha256")
    if wf.sha256 and locked.get("sha256") and locked["sha256"] != wf.sha256:
        raise ChecksumMismatchError(
            f"{card.key}/{wf.filename}: the card's sha256 {wf.sha256} differs from the one pinned in "
            f"{lock_path(card)} ({locked['sha256']}); fix whichever is wrong, never both blindly")
    revision = locked.get("revision") or wf.revision
    tried = _Attempts()

    for source, path in _local_copies(card, wf, revision, tried):
        if expected is None and source == "url-cache":
            continue  # nothing vouches for it (its pin was removed): download and pin afresh
        found = _verify(card, wf, path, expected, source, tried)
        if found:
            return _pin(card, wf, found, locked)

    if not network:
        tried.add("network", "not tried (offline: HF_HUB_OFFLINE or MLIPZOO_OFFLINE is set)")
        for m in wf.mirrors:  # where it would come from, e.g. to copy it in by hand
            if isinstance(m, UrlMirror):
                tried.add(f"URL {m.url}", "not tried (offline)")
    else:
        for source, path in _downloads(card, wf, revision, tried):
            found = _verify(card, wf, path, expected, source, tried)
            if found:
                return _pin(card, wf, found, locked)

    fixes = []
    if not network and (wf.hf_repo or any(isinstance(m, UrlMirror) for m in wf.mirrors)):
        fixes.append("connect to the network and unset HF_HUB_OFFLINE/MLIPZOO_OFFLINE, then "
                     f"`mlipzoo models fetch {card.key}`")
    elif wf.hf_repo or any(isinstance(m, UrlMirror) for m in wf.mirrors):
        fixes.append(f"check the network (or HF_ENDPOINT), then `mlipzoo models fetch {card.key}`")
    pkgs = sorted({m.package for m in wf.mirrors if isinstance(m, PackageMirror)})
    if pkgs:
        fixes.append(f"install the package that ships it: pip install 'mlip-zoo[{card.family}]' ({', '.join(pkgs)})")
    raise WeightsNotAvailableError(
        f"{card.key}: weights file {wf.filename!r} is not cached and could not be obtained; network needed.\n"
        "Sources tried:\n" + "\n".join(tried.lines) + "\nTo fix: " + "; or ".join(fixes or ["add a mirror to the card"]))


def _local_copies(card: ModelCard, wf: WeightFile, revision: str | None, tried: _Attempts):
    if wf.hf_repo:
        path = _hub_download(wf, revision, local_only=True, tried=tried)
        if path:
            yield "hub-cache", path
    for m in wf.mirrors:
        if isinstance(m, UrlMirror):
            path = _url_cache_path(card, wf)
            if path.exists():
                yield "url-cache", path
        else:
            path = _package_path(m)
            if path is None:
                tried.add(f"package {m.package}", "not installed")
            elif not path.exists():
                tried.add(f"package {m.package}", f"installed, but has no {m.path}")
            else:
                yield "package", path


def _downloads(card: ModelCard, wf: WeightFile, revision: str | None, tried: _Attempts):
    if wf.hf_repo:
        path = _hub_download(wf, revision, local_only=False, tried=tried)
        if path:
            yield "hub", path
    for m in wf.mirrors:
        if isinstance(m, UrlMirror):
            path = _url_download(m.url, _url_cache_path(card, wf), tried)
            if path:
                yield f"url {m.url}", path


def _verify(card, wf, path: Path, expected: str | None, source: str, tried: _Attempts) -> ResolvedFile | None:
    digest = sha256_of(path)
    url = source.removeprefix("url ") if source.startswith("url ") else None
    if expected is None or digest == expected:
        if url:  # a verified download enters the URL cache only now (see _url_download)
            final = path.with_name(path.name.removesuffix(".download"))
            os.replace(path, final)
            return ResolvedFile(wf.filename, final, digest, "url", url=url)
        return ResolvedFile(wf.filename, path, digest, source)
    pinned_by = "the card" if wf.sha256 else f"the pin in {lock_path(card)}"
    reason = (f"{card.key}/{wf.filename} from {source} ({path}) has sha256 {digest}, "
              f"expected {expected} ({pinned_by})")
    if source == "package":
        tried.add(f"package copy {path}", f"REFUSED: sha256 {digest} != {expected} (reinstall the package)")
    else:
        dest = quarantine(path, reason)
        tried.add(source, f"REFUSED: sha256 {digest} != {expected}; moved to {dest}")
    if source == "hub" or url:
        # A fresh download that does not match is tampering or a moved revision: stop, don't guess.
        if url and not wf.sha256:
            fix = (f"If the publisher really replaced the file, review the new one, then delete this file's "
                   f"entry for {card.key} in {lock_path(card)} and fetch again to pin it.")
        else:
            fix = "If the upstream file legitimately changed, update sha256 in the card."
        raise ChecksumMismatchError(
            f"{card.key}/{wf.filename}: the bytes served by {url or source} changed: sha256 {digest}, but "
            f"{pinned_by} says {expected}. The new file was quarantined as {dest} and not loaded"
            + ("; the verified copy already cached, if any, is untouched" if url else "") + f". {fix}")
    return None


def _pin(card: ModelCard, wf: WeightFile, found: ResolvedFile, locked: dict[str, str]) -> ResolvedFile:
    """Record the hash (and Hub commit, or URL and date) of a file the card could not pin itself."""
    entry = {"sha256": found.sha256}
    if found.source.startswith("hub"):
        commit = _commit_of_snapshot(found.path)
        if commit:
            entry["revision"] = commit
    elif found.source == "url" and not locked.get("sha256"):
        entry["url"] = found.url
    if not wf.sha256 and entry != {k: locked.get(k) for k in entry}:
        if "url" in entry:
            entry["pinned"] = _today()  # when trust was given, for whoever reviews the lock
        _write_lock(card, wf.filename, entry)
        return dataclasses.replace(found, pinned=entry)
    return found


def _commit_of_snapshot(path: Path) -> str | None:
    # Hub cache layout: models--org--name/snapshots/<commit>/<filename>
    parts = path.parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def _hub_download(wf: WeightFile, revision: str | None, *, local_only: bool, tried: _Attempts) -> Path | None:
    from huggingface_hub import constants as hf_constants
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import hf_hub_download

    # huggingface_hub freezes HF_HUB_OFFLINE when first imported; we read the environment now.
    hf_constants.HF_HUB_OFFLINE = offline()

    where = f"Hugging Face Hub {wf.hf_repo}@{revision} file {wf.filename}"
    try:
        return Path(hf_hub_download(
            repo_id=wf.hf_repo, filename=wf.filename, revision=revision, cache_dir=_hub_cache_dir(),
            endpoint=_hub_endpoint(), local_files_only=local_only))
    except hf_errors.GatedRepoError:
        tried.add(where, "gated repository: accept its terms on the Hub and `hf auth login` (or set HF_TOKEN)")
    except hf_errors.RepositoryNotFoundError:
        tried.add(where, f"repository {wf.hf_repo} not found (or private: set HF_TOKEN)")
    except hf_errors.RevisionNotFoundError:
        tried.add(where, f"revision {revision} not found in {wf.hf_repo}")
    except hf_errors.LocalEntryNotFoundError:
        tried.add(where, "not in the local Hub cache" if local_only else "unreachable and not cached")
    except hf_errors.EntryNotFoundError:
        tried.add(where, f"no file {wf.filename} in {wf.hf_repo} at revision {revision} (404)")
    except (hf_errors.HfHubHTTPError, OSError, ValueError) as exc:
        tried.add(where, f"failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    return None


def _url_cache_path(card: ModelCard, wf: WeightFile) -> Path:
    # Per-card folder, so a model's files stay siblings (some families load a directory).
    return cache_dir() / "url" / card.key / wf.filename


def _url_download(url: str, dest: Path, tried: _Attempts) -> Path | None:
    """Download to ``<dest>.download`` beside the cache; ``_verify`` moves it to ``dest`` only once
    its hash is right, so a changed upstream file can never replace a verified cached copy. A
    download cut short resumes on the next attempt (zoo/download.py)."""
    from mlip_zoo.errors import DownloadError
    from mlip_zoo.zoo.download import download

    done = dest.with_name(dest.name + ".download")
    try:
        download(url, done)
        return done
    except DownloadError as exc:
        tried.add(f"URL {url}", f"failed: {exc}")
        return None


def _package_path(mirror: PackageMirror) -> Path | None:
    spec = importlib.util.find_spec(mirror.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / mirror.path


# ---------------------------------------------------------------------------------------------
# Loading safety


def local_status(card: ModelCard) -> str:
    """Without hashing or network: ``none`` (no weights needed), ``unavailable``, ``local``
    (every file has a local copy to verify) or ``download`` (some file must be fetched)."""
    if not card.available:
        return "unavailable"
    if not card.weight_files:
        return "none"
    from huggingface_hub import try_to_load_from_cache

    revision_of = {name: entry.get("revision") for name, entry in read_lock(card).items()}
    for wf in card.weight_files:
        copies = []
        if wf.hf_repo:
            hit = try_to_load_from_cache(wf.hf_repo, wf.filename, cache_dir=_hub_cache_dir(),
                                         revision=revision_of.get(wf.filename) or wf.revision)
            copies.append(isinstance(hit, str))
        for m in wf.mirrors:
            path = _url_cache_path(card, wf) if isinstance(m, UrlMirror) else _package_path(m)
            copies.append(path is not None and path.exists())
        if not any(copies):
            return "download"
    return "local"


def check_local_copies(card: ModelCard, allow: Iterable[str] = ()) -> list[str]:
    """Problems with copies already on this machine (package mirrors, our URL cache): size or
    sha256 differing from the card, or bytes the loading gate would refuse (``allow``: the family's
    ``CHECKPOINT_GLOBALS``). Reads files only; fetches, moves and loads nothing."""
    problems = []
    for wf in card.weight_files:
        for m in wf.mirrors:
            path = _url_cache_path(card, wf) if isinstance(m, UrlMirror) else _package_path(m)
            if path is None or not path.exists():
                continue
            if wf.size is not None and path.stat().st_size != wf.size:
                problems.append(f"weights {wf.filename}: {path} has {path.stat().st_size} bytes, card says {wf.size}")
            elif wf.sha256 and sha256_of(path) != wf.sha256:
                problems.append(f"weights {wf.filename}: {path} has sha256 {sha256_of(path)}, card says {wf.sha256}")
            elif not card.trusted and (hazard := checkpoint_hazard(path, allow)):
                problems.append(f"weights {wf.filename}: {path} {hazard}, which can run code: set trusted: true "
                                "with a trusted_reason once its source is reviewed")
    return problems
