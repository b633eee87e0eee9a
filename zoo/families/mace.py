"""MACE foundation models (mace-torch). A ``.model`` file is a whole pickled torch module, so
these cards must be ``trusted: true`` (the loading gate in ``load_potential`` refuses the file
otherwise); mace-torch unpickles them itself.

mace-torch 0.3.16 pins ``e3nn==0.4.4`` while SevenNet and others need ``e3nn>=0.5``, so MACE
cards normally run in their own environment (zoo/envs.py). Importing ``mace`` also sets
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the whole process (e3nn 0.4.4 cannot load its own
constants under torch>=2.6 otherwise): every later ``torch.load`` there unpickles in full, one more
reason to keep MACE in worker processes of its own.
"""

from __future__ import annotations

from mlip_zoo.zoo.potential import CalculatorPotential
from mlip_zoo.zoo.registry import require_module


def load(card, files, *, device, dtype):
    calculators = require_module(card, "mace.calculators")  # imports mace before e3nn (see above)
    (path,) = files.values()
    dtype = dtype or "float64"  # matbench-discovery's protocol runs MACE in float64
    calc = calculators.MACECalculator(model_paths=str(path), device=device, default_dtype=dtype, **card.options)
    return CalculatorPotential(card, calc, device=device, dtype=dtype, cutoff=float(calc.r_max))
