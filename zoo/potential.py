"""The one interface every model family returns.

A ``Potential`` predicts energy (eV), forces (eV/Å) and stress (eV/Å³, ASE Voigt order
xx yy zz yz xz xy) for a batch of ``ase.Atoms``. Results are float64 on the CPU side, inputs are
never mutated, and a NaN or an element the model was not trained on raises a named error that
says which structure — it never passes silently into a metric.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from mlip_zoo.errors import (CapabilityNotSupportedError, InvalidStructureError, NonFiniteOutputError, PropertyNotSupportedError,
                             UnsupportedElementError)
from mlip_zoo.zoo.card import ModelCard
from mlip_zoo.zoo.structures import structure_label

PROPERTIES = ("energy", "forces", "stress")


@dataclass(frozen=True)
class Prediction:
    """One structure's prediction. ``stress`` is None when it was not asked for."""

    energy: float
    forces: np.ndarray  # (n_atoms, 3)
    stress: np.ndarray | None = None  # (6,) Voigt


def resolve_device(device: str) -> str:
    """``auto`` picks a CUDA GPU when torch sees one, else the CPU."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


# Closer than this, two atoms are one atom typed twice (a broken file), not physics.
MIN_DISTANCE = 0.1  # Å


def check_structure(atoms: Atoms, index: int = 0) -> None:
    """Refuse structures that would make any model return garbage, naming the structure."""
    def bad(why: str) -> InvalidStructureError:
        label = structure_label(atoms, index) if len(atoms) else f"#{index}"
        return InvalidStructureError(f"structure {label}: {why}", structure=label)

    if len(atoms) == 0:
        raise bad("has no atoms")
    if not np.all(np.isfinite(atoms.positions)):
        raise bad("has non-finite (NaN or infinite) positions")
    if atoms.pbc.any():
        cell = np.asarray(atoms.cell)
        if not np.all(np.isfinite(cell)):
            raise bad("has a non-finite cell")
        periodic = cell[atoms.pbc]  # the vectors along periodic axes must span that many dimensions
        if np.linalg.matrix_rank(periodic, tol=1e-6) < len(periodic):
            raise bad("is periodic but its cell is singular (zero volume or a zero vector); "
                      "give it a real cell or set pbc=False on those axes")
    overlap = closest_pair(atoms, MIN_DISTANCE)
    if overlap is not None:
        i, j, d = overlap
        raise bad(f"atoms {i} and {j} overlap ({d:.3f} Å apart)")


def closest_pair(atoms: Atoms, cutoff: float) -> tuple[int, int, float] | None:
    """The closest two atoms (periodic images included) when closer than ``cutoff``, else None.

    Runs on every prediction (every optimizer step), so it must cost little next to a model call
    (ASE's general neighbour list has a fixed cost of ~2 ms whatever the cutoff). A small cell
    compares every pair at once (~0.05 ms for 15 atoms); a large one uses a k-d tree over the
    atoms and their neighbouring images.
    """
    n, pbc = len(atoms), np.asarray(atoms.pbc, bool)
    positions = np.asarray(atoms.positions, float)
    offsets = np.zeros((1, 3), int)
    if pbc.any():
        cell = np.asarray(atoms.cell.complete(), float)  # non-periodic zero vectors filled in
        inverse = np.linalg.inv(cell)
        # Plane spacing along each periodic axis. When each is above the cutoff, a pair closer than
        # the cutoff is at most one image away from the wrapped positions along every axis.
        heights = 1.0 / np.linalg.norm(inverse, axis=0)
        if np.any(heights[pbc] <= cutoff):
            return 0, 0, float(heights[pbc].min())  # every atom sits on its own periodic image
        if n <= PAIRWISE_ATOMS and np.all(heights[pbc] > 2 * cutoff):
            # A displacement shorter than the cutoff has every fractional component below
            # cutoff / height < 1/2, so rounding the fractional difference finds its image exactly.
            frac = positions @ inverse
            diff = frac[:, None] - frac[None]
            diff[..., pbc] -= np.round(diff[..., pbc])
            return _closest(diff @ cell, cutoff)
    elif n <= PAIRWISE_ATOMS:
        return _closest(positions[:, None] - positions[None], cutoff)
    from ase.geometry import wrap_positions
    from scipy.spatial import cKDTree

    if pbc.any():
        positions = wrap_positions(positions, cell, pbc=pbc, eps=0)
        offsets = np.stack(np.meshgrid(*[(-1, 0, 1) if p else (0,) for p in pbc], indexing="ij"), -1).reshape(-1, 3)
    images = (positions[None] + (offsets @ cell if pbc.any() else offsets)[:, None]).reshape(-1, 3)
    pairs = cKDTree(positions).sparse_distance_matrix(cKDTree(images), cutoff, output_type="ndarray")
    home = n * int(np.flatnonzero(~offsets.any(axis=1))[0])  # where the unshifted copy starts
    keep = pairs["j"] != pairs["i"] + home  # not an atom paired with itself
    i, j, d = pairs["i"][keep], pairs["j"][keep] % n, pairs["v"][keep]
    if not len(d):
        return None
    m = int(np.argmin(d))
    return int(i[m]), int(j[m]), float(d[m])


PAIRWISE_ATOMS = 128  # up to this many atoms closest_pair compares all pairs; above, a k-d tree


@functools.lru_cache(maxsize=PAIRWISE_ATOMS + 1)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, k=1)


def _closest(displacements: np.ndarray, cutoff: float) -> tuple[int, int, float] | None:
    """The closest pair i < j of an (n, n, 3) array of displacements, if closer than ``cutoff``."""
    i, j = _pairs(len(displacements))
    if not len(i):
        return None
    d2 = np.einsum("pk,pk->p", displacements[i, j], displacements[i, j])
    m = int(np.argmin(d2))
    return (int(i[m]), int(j[m]), float(np.sqrt(d2[m]))) if d2[m] < cutoff * cutoff else None


class Potential(ABC):
    """A loaded model. Subclasses implement ``_predict_one``; the checks live here, once."""

    def __init__(self, card: ModelCard, *, device: str = "cpu", dtype: str = "float64",
                 cutoff: float | None = None):
        self.card = card
        self.device = device
        self.dtype = dtype
        self.cutoff = cutoff if cutoff is not None else card.cutoff
        self._elements = frozenset(card.elements)

    @property
    def implemented_properties(self) -> tuple[str, ...]:
        return PROPERTIES if self.card.stress else ("energy", "forces")

    def predict(self, batch: Sequence[Atoms], properties: Sequence[str] = ("energy", "forces", "stress"),
                ) -> list[Prediction]:
        """Predict every structure of ``batch``. Stress is left None for a model whose card does not
        target it; call ``require("stress")`` first where a task cannot do without it."""
        want_stress = "stress" in properties and "stress" in self.implemented_properties
        for i, atoms in enumerate(batch):
            check_structure(atoms, i)
            self.check_elements(atoms, i)
        raw = self._predict_many([atoms.copy() for atoms in batch], want_stress)
        return [self._checked(atoms, i, energy, forces, stress if want_stress else None)
                for i, (atoms, (energy, forces, stress)) in enumerate(zip(batch, raw, strict=True))]

    # How many relaxations ``evaluators.relax.relax_many`` runs side by side, batching their model
    # calls: 1 unless the family's batched path (``_predict_many``) was measured to pay.
    relax_batch_size: int = 1

    def require(self, prop: str) -> None:
        if prop not in self.implemented_properties:
            raise PropertyNotSupportedError(
                f"{self.card.key} does not predict {prop} (card targets: {self.card.targets}); "
                "pick a task that does not need it or a model that does")

    def check_elements(self, atoms: Atoms, index: int = 0) -> None:
        if not self._elements:
            return
        missing = sorted(set(atoms.get_chemical_symbols()) - self._elements)
        if missing:
            raise UnsupportedElementError(
                f"structure {structure_label(atoms, index)} contains {', '.join(missing)}, which "
                f"{self.card.key} was not trained on (see `elements` in its card)",
                structure=structure_label(atoms, index))

    def _checked(self, atoms: Atoms, index: int, energy, forces, stress) -> Prediction:
        energy = float(energy)
        forces = np.asarray(forces, dtype=np.float64).reshape(len(atoms), 3)
        if stress is not None:
            stress = np.asarray(stress, dtype=np.float64)
            if stress.shape == (3, 3):
                stress = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
            stress = stress.reshape(6)
        bad = [name for name, v in (("energy", energy), ("forces", forces), ("stress", stress))
               if v is not None and not np.all(np.isfinite(v))]
        if bad:
            label = structure_label(atoms, index)
            raise NonFiniteOutputError(
                f"{self.card.key} returned non-finite {', '.join(bad)} for structure {label}; "
                "check the structure (overlapping atoms, empty or singular cell)", structure=label)
        return Prediction(energy, forces, stress)

    @abstractmethod
    def _predict_one(self, atoms: Atoms, stress: bool) -> tuple[float, np.ndarray, np.ndarray | None]:
        """Energy, forces and (if ``stress``) Voigt stress of one structure, any numeric type."""

    def _predict_many(self, batch: list[Atoms], stress: bool) -> list[tuple[float, np.ndarray, np.ndarray | None]]:
        """``_predict_one`` of each structure; a family whose batched path is faster overrides this."""
        return [self._predict_one(atoms, stress) for atoms in batch]

    def as_calculator(self) -> Calculator:
        """An ASE calculator over this potential (for optimizers, MD, any ASE workflow)."""
        return PotentialCalculator(self)

    # Set on the potential ``test_time_train`` returns: losses, cost, trained/frozen modules.
    ttt_report = None

    def test_time_train(self, structures: Sequence[Atoms], energies, forces, *, steps: int, lr: float = 1e-5,
                        momentum: float = 0.9, weight_decay: float = 1e-3, batch_size: int = 32,
                        energy_weight: float = 1.0, force_weight: float = 1000.0,
                        clip_grad_norm: float | None = 10.0, seed: int = 0,
                        start_energies: Sequence[float] | None = None) -> Potential:
        """A NEW potential whose representation was trained on ``structures`` against a cheap
        prior's ``energies`` (eV, total) and ``forces`` (eV/Å) -- test-time training, see
        ``zoo/ttt.py``. This potential, and the weights on disk, are left untouched.
        ``start_energies``: this potential's own energies of ``structures`` when the caller has
        them already (they fit the prior head's energy reference); computed when omitted."""
        if "test_time_training" not in self.card.capabilities:
            raise CapabilityNotSupportedError(
                f"{self.card.key} cannot be test-time trained: its card does not list the "
                "`test_time_training` capability (families that support it: chgnet, sevenn)")
        from mlip_zoo.zoo.ttt import TTTProtocol, train

        for i, atoms in enumerate(structures):
            check_structure(atoms, i)
            self.check_elements(atoms, i)
        protocol = TTTProtocol(steps=steps, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               batch_size=batch_size, energy_weight=energy_weight, force_weight=force_weight,
                               clip_grad_norm=clip_grad_norm, seed=seed)
        potential, report = train(self._trainable(), structures, energies, forces, protocol, start_energies)
        potential.ttt_report = report
        return potential

    def _trainable(self):
        """The family's ``zoo.ttt.Trainable``: a private copy of its network to train."""
        raise CapabilityNotSupportedError(
            f"{self.card.key}: family {self.card.family!r} has no test-time training; remove "
            "`test_time_training` from the card's capabilities")

    def with_cutoff(self, radius: float) -> Potential:
        """This model with its radius graph built at ``radius`` Å (radius refinement). It shares
        the loaded network; this potential keeps its own radius.

        The radius in effect (``.cutoff`` of the result) is capped at the cutoff the model was
        trained with: beyond it, a model whose envelope vanishes there (CHGNet) gets only
        zero-weight edges, and one whose envelope polynomial is not masked (SevenNet) would
        extrapolate it (its predictions blow up). So refinement can only shrink the radius."""
        if "radius_refinement" not in self.card.capabilities:
            raise CapabilityNotSupportedError(
                f"{self.card.key} cannot change its cutoff: its card does not list the `radius_refinement` "
                "capability (families that support it: chgnet, sevenn)")
        if self.cutoff is None:
            raise CapabilityNotSupportedError(f"{self.card.key}: radius refinement needs the model's cutoff; "
                                              "set `cutoff` in its card")
        if not radius > 0:
            raise ValueError(f"cutoff radius must be positive, got {radius!r}")
        return CutoffPotential(self, float(radius))

    def _swap_graph_radius(self, radius: float) -> float:
        """Family hook for ``with_cutoff``: build graphs at ``radius`` from now on; return the
        radius this replaced."""
        raise CapabilityNotSupportedError(
            f"{self.card.key}: family {self.card.family!r} cannot change its graph radius; remove "
            "`radius_refinement` from the card's capabilities")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.card.key!r}, device={self.device!r}, dtype={self.dtype!r})"


class CalculatorPotential(Potential):
    """A potential backed by an ASE calculator, which most model packages provide.

    One calculator instance is reused for every structure (model loaded once). On a CPU a plain
    loop was measured faster than the packages' own batched paths (CHGNet), so this is the default.
    """

    def __init__(self, card: ModelCard, calculator: Calculator | Callable[[], Calculator], **kwargs):
        super().__init__(card, **kwargs)
        self.calculator = calculator() if callable(calculator) and not isinstance(calculator, Calculator) else calculator

    def _predict_one(self, atoms: Atoms, stress: bool):
        # Forget the previous structure (cached results, neighbour lists): a prediction must not
        # depend on what was predicted before it, or shard order would change the numbers.
        self.calculator.reset()
        atoms.calc = self.calculator
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        s = atoms.get_stress(voigt=True) if stress else None
        return energy, forces, s


class CutoffPotential(Potential):
    """``base`` with its graph radius set to ``min(radius, base.cutoff)`` around each prediction
    (what ``Potential.with_cutoff`` returns; ``requested_cutoff`` keeps the asked-for radius)."""

    def __init__(self, base: Potential, radius: float):
        super().__init__(base.card, device=base.device, dtype=base.dtype, cutoff=min(radius, base.cutoff))
        self.base, self.requested_cutoff = base, radius

    def _predict_one(self, atoms: Atoms, stress: bool):
        previous = self.base._swap_graph_radius(self.cutoff)
        try:
            return self.base._predict_one(atoms, stress)
        finally:  # the shared network goes back to its own radius whatever happened
            self.base._swap_graph_radius(previous)

    def with_cutoff(self, radius: float) -> Potential:
        return self.base.with_cutoff(radius)


class PotentialCalculator(Calculator):
    """ASE's view of a ``Potential``."""

    def __init__(self, potential: Potential, **kwargs):
        super().__init__(**kwargs)
        self.potential = potential
        self.implemented_properties = list(potential.implemented_properties) + ["free_energy"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        # ASE itself refuses properties outside implemented_properties (PropertyNotImplementedError).
        want = ("energy", "forces", "stress") if "stress" in properties else ("energy", "forces")
        pred = self._predict(self.atoms, want)
        self.results = {"energy": pred.energy, "free_energy": pred.energy, "forces": pred.forces}
        if pred.stress is not None:
            self.results["stress"] = pred.stress

    def _predict(self, atoms: Atoms, properties: tuple[str, ...]) -> Prediction:
        (pred,) = self.potential.predict([atoms], properties=properties)
        return pred
