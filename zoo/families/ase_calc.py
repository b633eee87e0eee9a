"""Any importable ASE calculator as a model: ``calculator: "module:Class"`` plus ``calculator_kwargs``.

The import happens only here, when a user evaluates the card on their own machine; validating a
submitted card never imports what it names.
"""

from __future__ import annotations

import importlib

from mlip_zoo.errors import CardError, MissingExtraError
from mlip_zoo.zoo.potential import CalculatorPotential


def load(card, files, *, device, dtype):
    module_name, _, attr = card.calculator.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingExtraError(f"{card.key}: cannot import {module_name!r} named by `calculator` ({exc}); "
                                "install the package that provides it") from exc
    try:
        cls = getattr(module, attr)
    except AttributeError:
        raise CardError(f"{card.path or card.key}: calculator: {module_name} has no attribute {attr!r}") from None
    kwargs = dict(card.calculator_kwargs)
    if files:  # a calculator with weights gets their paths under the names the card gives them
        kwargs.update({card.options.get("weights_kwarg", "model_path"): str(next(iter(files.values())))})
    return CalculatorPotential(card, cls(**kwargs), device=device, dtype=dtype or "float64")
