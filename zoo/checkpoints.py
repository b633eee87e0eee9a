"""The loading gate: whether a weights file could run code when a loader opens it, judged from its
bytes alone (pickle opcodes, torch zip archives, .npy headers, safetensors), never from its name
or the card's declared format. ``registry.load_potential`` passes every file of every family
through ``assert_safe_checkpoint`` before the family's loader sees it."""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

from mlip_zoo.errors import UntrustedCheckpointError
from mlip_zoo.zoo.card import ModelCard

# Globals a torch checkpoint may reference beyond torch's own safe set: numpy arrays, which
# SevenNet stores in its config. Rebuilding an ndarray runs no user code.
NUMPY_ARRAY_GLOBALS = (
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.ndarray",
    "numpy.dtype",
)


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
