"""DIEP (Tawfik et al., 2024) on PyTorch Geometric, as the ``diep`` package exports it: a folder of
``model.json`` + ``model.pt`` + ``state.pt``. Its tensors load under ``weights_only=True``."""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlip_zoo.zoo.potential import CalculatorPotential
from mlip_zoo.zoo.registry import require_module


def _model_dir(files: dict[str, Path]) -> Path:
    parents = {p.parent for p in files.values()}
    if len(parents) == 1:
        return parents.pop()
    # Files verified from different sources: gather links in one folder, as the loader wants.
    folder = Path(tempfile.mkdtemp(prefix="mlipzoo-diep-"))
    for name, p in files.items():
        (folder / Path(name).name).symlink_to(p)
    return folder


def load(card, files, *, device, dtype):
    pretrained = require_module(card, "diep.pretrained")
    calc = pretrained.make_calculator(_model_dir(files), device=device, stress=card.stress)
    return CalculatorPotential(card, calc, device=device, dtype=dtype or "float32")
