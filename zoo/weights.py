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

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mlip_zoo.errors import ChecksumMismatchError, UntrustedCheckpointError, WeightsNotAvailableError
from mlip_zoo.zoo.card import ModelCard, PackageMirror, UrlMirror, WeightFile

LOCK_NAME = "weights.lock"
_TRUE = {"1", "true", "yes", "on"}

# Globals a torch checkpoint may reference beyond torch's own safe set: numpy arrays, which
# SevenNet stores in its config. Rebuilding an ndarray runs no user code.
NUMPY_ARRAY_GLOBALS = (
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.ndarray",
    "numpy.dtype",
)


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


class _Attempts:
    """What each source said, so a final failure can list them all."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, source: str, outcome: str) -> None:
        self.lines.append(f"  - {source}: {outcome}")


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
        found = _verify(card, wf, path, expected, source, tried)
        if found:
            return _pin(card, wf, found, locked)

    if not network:
        tried.add("network", "not tried (offline: HF_HUB_OFFLINE or MLIPZOO_OFFLINE is set)")
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
                yield "url", path


def _verify(card, wf, path: Path, expected: str | None, source: str, tried: _Attempts) -> ResolvedFile | None:
    digest = sha256_of(path)
    if expected is None or digest == expected:
        return ResolvedFile(wf.filename, path, digest, source)
    reason = (f"{card.key}/{wf.filename} from {source} ({path}) has sha256 {digest}, "
              f"expected {expected}")
    if source == "package":
        tried.add(f"package copy {path}", f"REFUSED: sha256 {digest} != {expected} (reinstall the package)")
    else:
        dest = quarantine(path, reason)
        tried.add(source, f"REFUSED: sha256 {digest} != {expected}; moved to {dest}")
    if source in ("hub", "url"):
        # A fresh download that does not match is tampering or a moved revision: stop, don't guess.
        raise ChecksumMismatchError(reason + f"; the file was quarantined in {dest.parent} and not loaded. "
                                    "If the upstream file legitimately changed, update sha256 in the card.")
    return None


def _pin(card: ModelCard, wf: WeightFile, found: ResolvedFile, locked: dict[str, str]) -> ResolvedFile:
    """Record the hash (and Hub commit) of a file the card could not pin itself."""
    entry = {"sha256": found.sha256}
    if found.source.startswith("hub"):
        commit = _commit_of_snapshot(found.path)
        if commit:
            entry["revision"] = commit
    if not wf.sha256 and entry != {k: locked.get(k) for k in entry}:
        _write_lock(card, wf.filename, entry)
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
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f)
        os.replace(tmp, dest)
        return dest
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        tried.add(f"URL {url}", f"failed: {getattr(exc, 'reason', exc)}")
        return None


def _package_path(mirror: PackageMirror) -> Path | None:
    spec = importlib.util.find_spec(mirror.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / mirror.path


# ---------------------------------------------------------------------------------------------
# Loading safety


# What a pickle does on loading is decided by its opcodes, never by the file's name or the card's
# ``format``: a file is judged by what torch.load, numpy.load or pickle.load would do with its bytes.
_TORCH_ZIP, _NPY = b"PK\x03\x04", b"\x93NUMPY"
# Opcodes that import something (find_class). Without one, nothing callable reaches the stack, so
# REDUCE, BUILD or NEWOBJ can only fail: these are the opcodes that make unpickling run code.
_IMPORTING_OPCODES = {"GLOBAL", "INST", "STACK_GLOBAL", "EXT1", "EXT2", "EXT4"}
_STRING_OPCODES = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
                   "SHORT_BINSTRING", "BINGET", "GET", "LONG_BINGET"}
_DOTTED_PAIR = re.compile(r"[A-Za-z_][\w.]* [A-Za-z_][\w.]*")


def unsafe_globals(path: str | Path) -> list[str]:
    """Python globals a torch checkpoint would import when unpickled, beyond torch's safe set.

    Reads the pickle opcodes only; nothing is executed.
    """
    from torch.serialization import get_unsafe_globals_in_checkpoint

    return sorted(get_unsafe_globals_in_checkpoint(str(path)))


def checkpoint_hazard(path: str | Path, allow: Iterable[str] = ()) -> str | None:
    """Why loading ``path`` could run code, judged from its bytes; None when no loader could.

    A torch zip archive may reference torch's safe globals and ``allow``; a ``.npy`` (alone or in
    a zip) may not hold Python objects; any other file must not start with pickle opcodes that
    import something (a raw pickle of any protocol, or torch's legacy format). Nothing is executed.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(0)
        if head.startswith(_NPY):
            return _npy_hazard(f)
        if head.startswith(_TORCH_ZIP):
            return _zip_hazard(path, allow)
        if _is_safetensors(f, head, path.stat().st_size):
            return None
        return _pickle_hazard(f)


def _is_safetensors(f, head: bytes, size: int) -> bool:
    """8-byte little-endian header length, then that many bytes of a JSON object: inert tensors."""
    n = int.from_bytes(head, "little") if len(head) == 8 else 0
    if not 2 <= n <= min(size - 8, 100 << 20):
        return False
    f.seek(8)
    try:
        header = json.loads(f.read(n))
    except ValueError:
        return False
    finally:
        f.seek(0)
    return isinstance(header, dict)


def _npy_hazard(f) -> str | None:
    import numpy as np

    try:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}[version]
        _, _, dtype = read_header(f)
    except (KeyError, ValueError) as exc:
        return f"is a .npy array whose header cannot be checked ({exc or 'unsupported version'})"
    return "is a numpy array of Python objects (loading it unpickles)" if dtype.hasobject else None


def _zip_hazard(path: Path, allow: Iterable[str]) -> str | None:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            try:
                extra = [g for g in unsafe_globals(path) if g not in set(allow)]
            except Exception as exc:  # torch could not read it, so it cannot be shown to be safe
                return f"is a torch archive that cannot be scanned ({exc})"
            if extra:
                return (f"needs full unpickling (it references {', '.join(extra[:6])}"
                        f"{' ...' if len(extra) > 6 else ''})")
            return None
        for name in names:  # e.g. an .npz: numpy.load unpickles object arrays in it
            with archive.open(name) as member:
                head = member.read(8)
            with archive.open(name) as member:
                hazard = (_npy_hazard(member) if head.startswith(_NPY)
                          else _pickle_hazard(member) if head[:1] == b"\x80" else None)
            if hazard:
                return f"holds {name}, which {hazard}"
    return None


def _pickle_hazard(f) -> str | None:
    """Walk the pickles at the start of ``f`` (torch's legacy format is several in a row) up to
    the first bytes that are not pickle opcodes, as pickle.load would execute them."""
    import pickletools

    imports: list[str] = []
    while not imports:
        strings = 0
        try:
            for op, arg, _ in pickletools.genops(f):
                if op.name in _STRING_OPCODES:
                    strings += 1
                elif op.name in ("GLOBAL", "INST") and _DOTTED_PAIR.fullmatch(str(arg)):
                    imports.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and strings >= 2:
                    imports.append("<a global named on the stack>")
                elif op.name.startswith("EXT"):
                    imports.append(f"<copyreg extension {arg}>")
        except Exception:  # not (or no longer) pickle opcodes: pickle.load stops executing here too
            break
        if not f.read(1):
            break
        f.seek(-1, os.SEEK_CUR)
    if imports:
        return (f"is a pickle whose loading imports and calls {', '.join(imports[:6])}"
                f"{' ...' if len(imports) > 6 else ''}")
    return None


def assert_safe_checkpoint(card: ModelCard, path: Path, allow: Iterable[str] = ()) -> None:
    """Refuse a weights file whose loading could run code (see ``checkpoint_hazard``), unless the
    card is ``trusted``. ``load_potential`` calls this on every file of every family before the
    family's loader sees it; ``allow`` is the family's ``CHECKPOINT_GLOBALS``."""
    if card.trusted:
        return
    hazard = checkpoint_hazard(path, allow)
    if hazard:
        raise UntrustedCheckpointError(
            f"{card.key}: {path.name} {hazard}, which can run arbitrary code; it was not loaded. Review where "
            f"it comes from, then set `trusted: true` and a trusted_reason in {card.path or 'the card'}.")


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
