"""MatterSim (Microsoft). Its checkpoints are unpickled by the package (weights_only=False), so the
loading gate in ``load_potential`` refuses one that references more than torch's safe globals unless
the card is ``trusted: true`` with the reason stated."""

from __future__ import annotations

from mlip_zoo.zoo.potential import CalculatorPotential
from mlip_zoo.zoo.registry import require_module

# Imported when the card's environment is built (zoo/envs.py), so a broken install fails there.
IMPORTS = ("mattersim.forcefield",)


def load(card, files, *, device, dtype):
    forcefield = require_module(card, "mattersim.forcefield")
    (path,) = files.values()
    calc = forcefield.MatterSimCalculator(load_path=str(path), device=device, **card.options)
    return CalculatorPotential(card, calc, device=device, dtype=dtype or "float32")
