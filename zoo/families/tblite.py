"""GFN2-xTB (and the other xTB methods) through tblite's ASE calculator: a cheap quantum baseline."""

from __future__ import annotations

from mlip_zoo.zoo.potential import CalculatorPotential
from mlip_zoo.zoo.registry import require_module


def load(card, files, *, device, dtype):
    tblite_ase = require_module(card, "tblite.ase")
    options = {"method": "GFN2-xTB", "verbosity": 0, **card.options}
    return CalculatorPotential(card, tblite_ase.TBLite(**options), device="cpu", dtype="float64")
