"""PET-MAD (lab-cosmo), through its metatomic ASE calculator, from a local checkpoint file."""

from __future__ import annotations

from mlip_zoo.zoo.potential import CalculatorPotential
from mlip_zoo.zoo.registry import require_module


def load(card, files, *, device, dtype):
    calculator = require_module(card, "pet_mad.calculator")
    (path,) = files.values()
    calc = calculator.PETMADCalculator(checkpoint_path=str(path), device=device, **card.options)
    return CalculatorPotential(card, calc, device=device, dtype=dtype or "float32")
