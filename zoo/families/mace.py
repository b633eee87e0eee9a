"""MACE foundation models (mace-torch). A ``.model`` file is a whole pickled torch module, so
these cards must be ``trusted: true``; mace-torch unpickles them itself."""

from __future__ import annotations

from mlip_zoo.zoo.potential import CalculatorPotential
from mlip_zoo.zoo.registry import require_module


def load(card, files, *, device, dtype):
    calculators = require_module(card, "mace.calculators")
    (path,) = files.values()
    dtype = dtype or "float64"  # matbench-discovery's protocol runs MACE in float64
    calc = calculators.MACECalculator(model_paths=str(path), device=device, default_dtype=dtype, **card.options)
    return CalculatorPotential(card, calc, device=device, dtype=dtype)
