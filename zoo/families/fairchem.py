"""FAIR Chemistry models (fairchem-core). ``options.api: v2`` (UMA, eSEN: a predict unit plus
``options.task_name``) or ``v1`` (EquiformerV2 OMat24 checkpoints: ``OCPCalculator``, which only
fairchem-core 1.x provides)."""

from __future__ import annotations

from mlip_zoo.zoo.potential import CalculatorPotential
from mlip_zoo.zoo.registry import require_module


def load(card, files, *, device, dtype):
    (path,) = files.values()
    if card.options.get("api", "v2") == "v1":
        ase_utils = require_module(card, "fairchem.core.common.relaxation.ase_utils")
        calc = ase_utils.OCPCalculator(checkpoint_path=str(path), cpu=device == "cpu")
    else:
        core = require_module(card, "fairchem.core")
        unit = core.pretrained_mlip.load_predict_unit(str(path), device=device)
        calc = core.FAIRChemCalculator(unit, task_name=card.options.get("task_name", "omat"))
    return CalculatorPotential(card, calc, device=device, dtype=dtype or "float32")
