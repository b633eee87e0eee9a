"""An allow-listed ASE calculator as a model: ``calculator: "module:Class"`` plus ``calculator_kwargs``.

Importing a module runs its code, so the module must be on the allow-list (``calculator_modules()``
in card.py) or the card ``trusted``, and what it names must be an ASE calculator class, checked
before anything of it is called. ``validate`` makes the same checks and imports only allow-listed modules.
"""

from __future__ import annotations

import importlib
import inspect

from mlip_zoo.errors import CardError, MissingExtraError
from mlip_zoo.zoo.card import ModelCard, check_calculator_module
from mlip_zoo.zoo.potential import CalculatorPotential


def calculator_class(card: ModelCard, *, import_trusted: bool = True) -> type | None:
    """The card's calculator class, or ``CardError`` naming the field and the fix.

    A trusted card's module off the allow-list is imported only with ``import_trusted`` (None
    otherwise: ``validate`` never imports code a submitted card names)."""
    from ase.calculators.calculator import BaseCalculator, FileIOCalculator
    from ase.calculators.genericfileio import GenericFileIOCalculator

    if not check_calculator_module(card) and not import_trusted:
        return None
    where = f"{card.path or card.key}: calculator"
    module_name, _, attr = card.calculator.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingExtraError(f"{where}: cannot import {module_name!r} ({exc}); "
                                "install the package that provides it") from exc
    try:  # the module's own attribute, without running a property or a module __getattr__
        obj = inspect.getattr_static(module, attr)
    except AttributeError:
        raise CardError(f"{where}: {module_name} has no attribute {attr!r}") from None
    if not (isinstance(obj, type) and issubclass(obj, BaseCalculator)):
        raise CardError(f"{where}: {card.calculator} is a {type(obj).__name__}, not an ASE calculator class "
                        "(a subclass of ase.calculators.calculator.BaseCalculator); name the class itself")
    if issubclass(obj, (FileIOCalculator, GenericFileIOCalculator)) and not card.trusted:
        raise CardError(f"{where}: {card.calculator} runs an external program set by its keywords or "
                        "environment; use an in-process calculator, or set trusted: true with a trusted_reason")
    return obj


def load(card, files, *, device, dtype):
    cls = calculator_class(card)
    kwargs = dict(card.calculator_kwargs)
    if files:  # a calculator with weights gets their paths under the names the card gives them
        kwargs.update({card.options.get("weights_kwarg", "model_path"): str(next(iter(files.values())))})
    return CalculatorPotential(card, cls(**kwargs), device=device, dtype=dtype or "float64")
