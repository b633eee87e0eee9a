"""SevenNet (Park et al., 2024), an e3nn-based equivariant network.

SevenNet checkpoints keep numpy arrays in their config, so ``weights_only=True`` alone refuses
them; we check that numpy arrays are the *only* extra globals before sevenn unpickles the file.
"""

from __future__ import annotations

import warnings

from mlip_zoo.zoo.potential import CalculatorPotential
from mlip_zoo.zoo.registry import require_module
from mlip_zoo.zoo.weights import NUMPY_ARRAY_GLOBALS, assert_safe_checkpoint


def load(card, files, *, device, dtype):
    calculator = require_module(card, "sevenn.calculator")
    (path,) = files.values()
    assert_safe_checkpoint(card, path, allow=NUMPY_ARRAY_GLOBALS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no tensor-product accelerator" is expected on a CPU
        calc = calculator.SevenNetCalculator(model=str(path), device=device, **card.options)
    return CalculatorPotential(card, calc, device=device, dtype=dtype or "float32", cutoff=float(calc.cutoff))
