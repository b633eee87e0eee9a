"""Orb models (orb-models). ``options.model`` names the constructor in
``orb_models.forcefield.pretrained`` that matches the checkpoint (e.g. orb_v3_conservative_inf_mpa)."""

from __future__ import annotations

from mlip_zoo.errors import CardError
from mlip_zoo.zoo.potential import CalculatorPotential
from mlip_zoo.zoo.registry import require_module


def load(card, files, *, device, dtype):
    pretrained = require_module(card, "orb_models.forcefield.pretrained")
    calculator = require_module(card, "orb_models.forcefield.calculator")
    name = card.options.get("model")
    build = getattr(pretrained, str(name), None)
    if build is None:
        raise CardError(f"{card.path or card.key}: options.model must name a function of "
                        f"orb_models.forcefield.pretrained, got {name!r}")
    (path,) = files.values()
    precision = card.options.get("precision", "float32-high")
    orbff = build(weights_path=str(path), device=device, precision=precision)
    return CalculatorPotential(card, calculator.ORBCalculator(orbff, device=device), device=device,
                               dtype=dtype or precision)
