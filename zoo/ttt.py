"""Test-time training (TTT): adapt a pretrained model's representation to the test structures
with the labels of a cheap prior (EMT, GFN2-xTB), never with the reference labels.

Protocol facts (Kreiman & Krishnapriyan 2025, ASK-Berkeley/MLFF-distribution-shifts, ttt_trainer):
SGD (lr 1e-5, momentum 0.9, weight decay 1e-3) on batches of 32 drawn by cycling through the
shuffled test set, gradient norm clipped at 10 (their ``optim.clip_grad_norm``), and

    loss = 1 * MAE(E) + 1000 * L2MAE(F)
    MAE(E)   = mean over the batch's structures of |E_pred - E_prior|        (total energies, eV)
    L2MAE(F) = mean over the batch's free atoms of |F_pred,i - F_prior,i|_2  (eV/Å)

with the prior head frozen and the representation trained; the main head is swapped back for
evaluation. Our pretrained models have a single head, so the head stays frozen throughout and the
"prior head" is that head plus a per-element energy reference fitted by least squares to the prior's
energies (what a head's composition model learns from prior labels; an EMT energy is not on a DFT
scale): E_prior ~ E_model + sum_Z n_Z mu_Z. Forces need no such term.

Families take part by returning a ``Trainable`` (a private deep copy of their network, which
parameters are representation, a differentiable energy/forces pass); the loop lives here, once.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms
from pydantic import BaseModel, ConfigDict, Field

from mlip_zoo.errors import TrainingLabelError
from mlip_zoo.zoo.structures import free_mask

if TYPE_CHECKING:
    from mlip_zoo.zoo.potential import Potential


class TTTProtocol(BaseModel):
    """The constants of one test-time training run (defaults: the paper's, except ``steps``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    steps: int = Field(gt=0)
    lr: float = Field(1e-5, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(1e-3, ge=0)
    batch_size: int = Field(32, gt=0)
    energy_weight: float = Field(1.0, ge=0)
    force_weight: float = Field(1000.0, ge=0)
    clip_grad_norm: float | None = Field(10.0, gt=0)
    seed: int = 0


@dataclass(frozen=True)
class TTTReport:
    """What a run did: the loss before each step, its cost, and which parameters it touched."""

    losses: list[float]  # batch loss before each optimizer step
    seconds: float  # whole run: reference fit + every step
    trained: list[str]  # top-level modules whose parameters were updated (the representation)
    frozen: list[str]  # top-level modules held fixed (the head)
    n_trained_parameters: int
    energy_reference: dict[str, float]  # mu_Z (eV/atom) of the prior head's per-element energy reference


class Trainable(ABC):
    """A family's private, trainable copy of its network. The loaded model is never touched."""

    module: Any  # torch.nn.Module: the deep copy this run trains

    @abstractmethod
    def is_representation(self, parameter_name: str) -> bool:
        """True for the parameters TTT updates; the rest (the head) stay frozen."""

    @abstractmethod
    def energy_forces(self, atoms: Atoms) -> tuple[Any, Any]:
        """Total energy (0-d tensor, eV) and forces ((n, 3) tensor, eV/Å), differentiable in the
        parameters (forces through the model's own force path, with the graph kept)."""

    @abstractmethod
    def potential(self) -> Potential:
        """A new ``Potential`` around ``module`` (called after training, in eval mode)."""


def _checked_labels(structures: Sequence[Atoms], energies, forces) -> tuple[np.ndarray, list[np.ndarray]]:
    if not structures:
        raise TrainingLabelError("test-time training needs at least one structure")
    energies = np.asarray(energies, dtype=np.float64).reshape(-1)
    if len(energies) != len(structures) or len(forces) != len(structures):
        raise TrainingLabelError(f"got {len(structures)} structures but {len(energies)} energies and "
                                 f"{len(forces)} force arrays; pass one label of each per structure")
    out = []
    for i, (atoms, f) in enumerate(zip(structures, forces, strict=True)):
        f = np.asarray(f, dtype=np.float64)
        if f.shape != (len(atoms), 3):
            raise TrainingLabelError(f"structure #{i} ({atoms.get_chemical_formula()}) has {len(atoms)} atoms "
                                     f"but its forces have shape {f.shape}; expected ({len(atoms)}, 3)")
        if not (np.isfinite(energies[i]) and np.all(np.isfinite(f))):
            raise TrainingLabelError(f"structure #{i} ({atoms.get_chemical_formula()}) has a non-finite "
                                     "energy or force label; drop it from the training set")
        out.append(f)
    return energies, out


def _batches(n: int, size: int, rng: np.random.Generator) -> Iterator[list[int]]:
    """Cycle through the set in shuffled order, ``size`` at a time (a shorter batch ends each
    pass, as a DataLoader without drop_last does); a new permutation every pass."""
    while True:
        order = rng.permutation(n)
        for start in range(0, n, size):
            yield order[start:start + size].tolist()


def _top_level(name: str) -> str:
    return name.split(".", 1)[0]


def train(trainable: Trainable, structures: Sequence[Atoms], energies, forces, protocol: TTTProtocol,
          start_energies: Sequence[float] | None = None) -> tuple[Potential, TTTReport]:
    """Run test-time training on ``trainable`` against prior labels; returns the new potential.
    ``start_energies``: the untrained model's energies of ``structures`` if already known."""
    import torch

    t0 = time.perf_counter()
    energies, forces = _checked_labels(structures, energies, forces)
    module = trainable.module
    named = list(module.named_parameters())
    was_trainable = {name: p.requires_grad for name, p in named}
    params = [p for name, p in named if trainable.is_representation(name) and p.requires_grad]
    trained = sorted({_top_level(n) for n, p in named if trainable.is_representation(n) and p.requires_grad})
    frozen = sorted({_top_level(n) for n, _ in named} - set(trained))
    chosen = {id(p) for p in params}
    for _, p in named:
        p.requires_grad_(id(p) in chosen)

    # The prior head's energy reference, fitted once on the starting model.
    module.eval()
    if start_energies is None:
        start_energies = [float(trainable.energy_forces(a)[0].detach()) for a in structures]
    start = np.asarray(start_energies, dtype=np.float64).reshape(-1)
    if len(start) != len(structures):
        raise TrainingLabelError(f"got {len(start)} start energies for {len(structures)} structures")
    symbols = sorted({s for a in structures for s in a.get_chemical_symbols()})
    counts = np.array([[a.get_chemical_symbols().count(s) for s in symbols] for a in structures], dtype=float)
    mu = np.linalg.lstsq(counts, energies - start, rcond=None)[0]
    offsets = counts @ mu

    torch.manual_seed(protocol.seed)
    rng = np.random.default_rng(protocol.seed)
    free = [free_mask(a) for a in structures]  # fixed atoms' forces are not trained on (train_on_free_atoms)
    param = params[0] if params else None
    dtype, device = (param.dtype, param.device) if param is not None else (torch.float32, "cpu")
    target_e = torch.tensor(energies - offsets, dtype=dtype, device=device)
    target_f = [torch.tensor(f, dtype=dtype, device=device) for f in forces]
    masks = [torch.tensor(m, device=device) for m in free]
    optimizer = torch.optim.SGD(params, lr=protocol.lr, momentum=protocol.momentum,
                                weight_decay=protocol.weight_decay)
    batches = _batches(len(structures), protocol.batch_size, rng)
    losses: list[float] = []
    module.train()
    try:
        for _ in range(protocol.steps):
            batch = next(batches)
            n_free = sum(int(free[i].sum()) for i in batch)
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            # One structure at a time, each term already divided by the batch's normaliser: the
            # summed gradients equal the batched loss's, without one large graph in memory.
            for i in batch:
                energy, pred_forces = trainable.energy_forces(structures[i])
                loss = protocol.energy_weight * (energy - target_e[i]).abs() / len(batch)
                if n_free:
                    err = (pred_forces[masks[i]] - target_f[i][masks[i]]).norm(dim=-1)
                    loss = loss + protocol.force_weight * err.sum() / n_free
                loss.backward()
                total += float(loss.detach())
            if protocol.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_norm=protocol.clip_grad_norm)
            optimizer.step()
            losses.append(total)
    finally:
        module.eval()
        for name, p in named:
            p.requires_grad_(was_trainable[name])
            p.grad = None
    report = TTTReport(losses=losses, seconds=time.perf_counter() - t0, trained=trained, frozen=frozen,
                       n_trained_parameters=sum(p.numel() for p in params),
                       energy_reference={s: float(m) for s, m in zip(symbols, mu, strict=True)})
    return trainable.potential(), report
