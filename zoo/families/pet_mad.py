"""PET-MAD (lab-cosmo), through its metatomic ASE calculator, from a local checkpoint file."""

from __future__ import annotations

from mlip_zoo.zoo.potential import CalculatorPotential
from mlip_zoo.zoo.registry import require_module

# Imported when the card's environment is built (zoo/envs.py), so a broken install fails there.
IMPORTS = ("pet_mad.calculator",)


def load(card, files, *, device, dtype):
    calculator = require_module(card, "pet_mad.calculator")
    (path,) = files.values()
    # The card's version, not pet-mad's "latest": the package names its TorchScript export and
    # gates features (uncertainty, non-conservative heads) by it, even for a checkpoint file.
    options = {"version": card.version, **card.options}
    calc = calculator.PETMADCalculator(checkpoint_path=str(path), device=device, **options)
    return CalculatorPotential(card, calc, device=device, dtype=dtype or "float32")
