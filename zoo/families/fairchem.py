"""FAIR Chemistry models (fairchem-core). ``options.api: v2`` (UMA, eSEN: a predict unit plus
``options.task_name``) or ``v1`` (EquiformerV2 OMat24 checkpoints: ``OCPCalculator``, which only
fairchem-core 1.x provides).

A v2 checkpoint is a pickled ``MLIPInferenceCheckpoint`` whose model config fairchem rebuilds with
``hydra.utils.instantiate`` (it names the classes to import and call), so loading one runs code
the file chooses: v2 cards must be ``trusted: true`` (the loading gate refuses the file otherwise).

v2 options: ``task_name`` (default ``omat``); ``inference_settings``, one of fairchem's presets
(``default``, ``batch``, ``high-precision``, ...); ``precision`` (``float32`` or ``float64``).
Without a preset, on a CPU the model runs uncompiled in full float32: fairchem's ``default``
compiles (minutes, and a C++ toolchain, before the first prediction) and uses TF32 on GPUs.
"""

from __future__ import annotations

import dataclasses

from mlip_zoo.errors import CardError
from mlip_zoo.zoo.potential import CalculatorPotential
from mlip_zoo.zoo.registry import require_module

# Imported when the card's environment is built (zoo/envs.py), so a broken install fails there.
IMPORTS = ("fairchem.core",)

_PRECISIONS = ("float32", "float64")


def _inference_settings(card, device: str):
    api = require_module(card, "fairchem.core.units.mlip_unit.api.inference")
    opts = card.options
    precision = opts.get("precision")
    if precision is not None and precision not in _PRECISIONS:
        raise CardError(f"{card.path or card.key}: options.precision must be float32 or float64, got {precision!r}")
    preset = opts.get("inference_settings")
    if preset is not None:
        if preset not in api.NAME_TO_INFERENCE_SETTING:
            raise CardError(f"{card.path or card.key}: options.inference_settings must be one of "
                            f"{', '.join(api.NAME_TO_INFERENCE_SETTING)}, got {preset!r}")
        settings = dataclasses.replace(api.NAME_TO_INFERENCE_SETTING[preset])  # a copy: presets are shared
    elif device == "cpu":
        settings = api.InferenceSettings(tf32=False, activation_checkpointing=False, merge_mole=False, compile=False,
                                         external_graph_gen=False, internal_graph_gen_version=2)
    else:
        settings = dataclasses.replace(api.NAME_TO_INFERENCE_SETTING["default"])
    if precision is not None:
        import torch

        settings.base_precision_dtype = getattr(torch, precision)
    return settings


def load(card, files, *, device, dtype):
    (path,) = files.values()
    if card.options.get("api", "v2") == "v1":
        ase_utils = require_module(card, "fairchem.core.common.relaxation.ase_utils")
        calc = ase_utils.OCPCalculator(checkpoint_path=str(path), cpu=device == "cpu")
        return CalculatorPotential(card, calc, device=device, dtype=dtype or "float32")
    core = require_module(card, "fairchem.core")
    settings = _inference_settings(card, device)
    unit = core.pretrained_mlip.load_predict_unit(str(path), inference_settings=settings, device=device)
    calc = core.FAIRChemCalculator(unit, task_name=card.options.get("task_name", "omat"))
    precision = str(settings.base_precision_dtype).removeprefix("torch.")
    return CalculatorPotential(card, calc, device=device, dtype=dtype or precision)
