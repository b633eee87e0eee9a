"""Orb models (orb-models). Orb checkpoints are plain state dicts (orb-models itself loads them
with ``torch.load(weights_only=True)`` into an architecture built in code), so a card names the
architecture one of two ways:

- ``options.model``: the constructor in ``orb_models.forcefield.pretrained`` of a published model
  (e.g. ``orb_v3_conservative_inf_mpa``), which builds that model's architecture and loads the file;
- ``options.architecture`` (e.g. ``orb_v3_conservative_architecture``) with optional
  ``architecture_kwargs`` and ``system_config`` (``radius``, ``max_num_neighbors``): for a
  fine-tuned or custom-sized checkpoint, loaded by the same ``pretrained.load_model``.

``options.precision`` is orb's (``float32-high`` default, ``float32-highest``, ``float64``).
``options.compile`` (default false): orb compiles by default on a GPU and CPU alike, which costs
minutes and a C++ toolchain on a CPU before the first prediction; opt in where it pays.
"""

from __future__ import annotations

from mlip_zoo.errors import CardError
from mlip_zoo.zoo.potential import CalculatorPotential
from mlip_zoo.zoo.registry import require_module

# Imported when the card's environment is built (zoo/envs.py), so a broken install fails there.
IMPORTS = ("orb_models.forcefield.pretrained", "orb_models.forcefield.calculator")

_DTYPES = {"float32-high": "float32", "float32-highest": "float32", "float64": "float64"}


def _function(card, module, option: str, name):
    build = getattr(module, str(name), None) if name else None
    if not callable(build):
        raise CardError(f"{card.path or card.key}: options.{option} must name a function of "
                        f"{module.__name__}, got {name!r}")
    return build


def load(card, files, *, device, dtype):
    pretrained = require_module(card, "orb_models.forcefield.pretrained")
    calculator = require_module(card, "orb_models.forcefield.calculator")
    (path,) = files.values()
    opts = card.options
    precision = opts.get("precision", "float32-high")
    if precision not in _DTYPES:
        raise CardError(f"{card.path or card.key}: options.precision must be one of {', '.join(_DTYPES)}, "
                        f"got {precision!r}")
    compile_ = bool(opts.get("compile", False))
    if "architecture" in opts:
        if "model" in opts:
            raise CardError(f"{card.path or card.key}: set options.model (a published model) or "
                            "options.architecture (a custom checkpoint), not both")
        build = _function(card, pretrained, "architecture", opts["architecture"])
        system = require_module(card, "orb_models.forcefield.atomic_system")
        config = system.SystemConfig(**(opts.get("system_config") or {"radius": 6.0, "max_num_neighbors": 120}))
        model = build(device=device, system_config=config, **(opts.get("architecture_kwargs") or {}))
        orbff = pretrained.load_model(model, str(path), device, precision=precision, compile=compile_)
    else:
        build = _function(card, pretrained, "model", opts.get("model"))
        orbff = build(weights_path=str(path), device=device, precision=precision, compile=compile_)
    cutoff = float(getattr(getattr(orbff, "system_config", None), "radius", 0.0)) or card.cutoff
    return CalculatorPotential(card, calculator.ORBCalculator(orbff, device=device), device=device,
                               dtype=dtype or _DTYPES[precision], cutoff=cutoff)
