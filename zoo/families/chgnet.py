"""CHGNet (Deng et al., 2023). Its checkpoints are plain tensors and dicts, so we load them with
``torch.load(weights_only=True)`` ourselves instead of the package's unrestricted loader."""

from __future__ import annotations

import warnings

from mlip_zoo.zoo.potential import CalculatorPotential
from mlip_zoo.zoo.registry import require_module


def load(card, files, *, device, dtype):
    # chgnet converts a grad-tracking volume tensor on every call; harmless, and it floods logs.
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True", module="chgnet")
    torch = require_module(card, "torch")
    model_mod = require_module(card, "chgnet.model")
    dynamics = require_module(card, "chgnet.model.dynamics")
    (path,) = files.values()
    state = torch.load(path, map_location="cpu", weights_only=True)
    # options carry constructor switches a checkpoint needs (0.2.0: mlp_out_bias=True, as chgnet's own loader sets)
    model = model_mod.CHGNet.from_dict(state["model"], **card.options)
    calc = dynamics.CHGNetCalculator(model=model, use_device=device, on_isolated_atoms="ignore")
    # CHGNet runs in float32; its calculator returns float32-derived numbers we cast to float64.
    return CalculatorPotential(card, calc, device=device, dtype=dtype or "float32")
