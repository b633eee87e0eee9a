"""Model families: the adapters that turn a card into a ``Potential``.

Families register under the entry-point group ``mlip_zoo.families`` as lazy ``module:function``
targets, so a third-party package can add one, and listing them imports no model framework.
"""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint
from types import ModuleType

from mlip_zoo.errors import MissingExtraError, UnknownFamilyError
from mlip_zoo.plugins import Plugins
from mlip_zoo.zoo.card import ModelCard, get_card
from mlip_zoo.zoo.potential import Potential, resolve_device
from mlip_zoo.zoo.checkpoints import assert_safe_checkpoint
from mlip_zoo.zoo.weights import resolve_weights

FAMILIES = Plugins("mlip_zoo.families", "model family", UnknownFamilyError)


def families() -> dict[str, EntryPoint]:
    return FAMILIES.all()


def check_family(name: str) -> None:
    FAMILIES.get(name)


def require_module(card: ModelCard, module: str) -> ModuleType:
    """Import a family's framework, or say exactly which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{card.key} needs the Python package behind {module!r} ({exc}). "
            f"Install it with: pip install 'mlip-zoo[{card.family}]'") from exc


def checkpoint_globals(family: str) -> tuple[str, ...]:
    """Globals a family's checkpoints may reference beyond torch's safe set: its adapter module's
    ``CHECKPOINT_GLOBALS`` (SevenNet keeps numpy arrays in its config)."""
    check_family(family)
    return tuple(getattr(importlib.import_module(FAMILIES.get(family).module), "CHECKPOINT_GLOBALS", ()))


def load_potential(card: ModelCard | str, *, device: str = "cpu", dtype: str | None = None) -> Potential:
    """Card (or key) -> verified weights -> the family's ``Potential`` on ``device``.

    Every weight file passes the one loading gate (``assert_safe_checkpoint``) before any family
    code sees it, so no adapter can forget it."""
    if isinstance(card, str):
        card = get_card(card)
    check_family(card.family)
    files = {name: f.path for name, f in resolve_weights(card).items()}
    allow = checkpoint_globals(card.family)
    for path in files.values():
        assert_safe_checkpoint(card, path, allow)
    loader = FAMILIES.load(card.family)
    return loader(card, files, device=resolve_device(device), dtype=dtype)

