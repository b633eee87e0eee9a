"""SevenNet (Park et al., 2024), an e3nn-based equivariant network.

SevenNet checkpoints keep numpy arrays in their config, so ``weights_only=True`` alone refuses
them; ``CHECKPOINT_GLOBALS`` lets the loading gate (``load_potential``) accept numpy arrays as the
*only* extra globals before sevenn unpickles the file.
"""

from __future__ import annotations

import copy
import re
import warnings

import numpy as np

from mlip_zoo.zoo.potential import CalculatorPotential
from mlip_zoo.zoo.registry import require_module
from mlip_zoo.zoo.ttt import Trainable
from mlip_zoo.zoo.checkpoints import NUMPY_ARRAY_GLOBALS

CHECKPOINT_GLOBALS = NUMPY_ARRAY_GLOBALS


class SevenNetPotential(CalculatorPotential):
    """SevenNet behind its ASE calculator, plus the hooks of the methods only some families have."""

    def _trainable(self) -> Trainable:
        return _SevenNetTrainable(self)

    @property
    def relax_batch_size(self) -> int:
        # CPU, one torch thread: a batch of 8 small cells costs 0.93x eight single calls, but
        # relaxing 8 in lockstep was 1.04x slower than one by one (benchmarks/RESULTS.md), so on a
        # CPU relaxations run one at a time. On a GPU batches pay; 32 is not measured here.
        return 1 if self.device == "cpu" else 32

    def _predict_many(self, batch, stress):
        calc = self.calculator
        if len(batch) == 1 or calc.modal:  # a multi-fidelity model's modality is set per graph: one at a time
            return super()._predict_many(batch, stress)
        import sevenn._keys as KEY
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph
        from torch_geometric.data import Batch

        graphs = [AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(a, calc.cutoff, with_shift=False))
                  for a in batch]
        calc.model.set_is_batch_data(True)
        try:
            out = calc.model(Batch.from_data_list(graphs).to(calc.device))
        finally:
            calc.model.set_is_batch_data(False)
        energy = out[KEY.PRED_TOTAL_ENERGY].detach().cpu().numpy().reshape(-1)
        forces = np.split(out[KEY.PRED_FORCE].detach().cpu().numpy(), np.cumsum([len(a) for a in batch])[:-1])
        voigt = (-out[KEY.PRED_STRESS]).detach().cpu().numpy()[:, [0, 1, 2, 4, 5, 3]]  # as SevenNetCalculator
        return [(energy[i], forces[i], voigt[i] if stress else None) for i in range(len(batch))]

    def _swap_graph_radius(self, radius: float) -> float:
        # The radius the calculator builds its graph at; the radial basis and envelope stay as trained.
        previous, self.calculator.cutoff = self.calculator.cutoff, radius
        return previous


def load(card, files, *, device, dtype):
    calculator = require_module(card, "sevenn.calculator")
    (path,) = files.values()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no tensor-product accelerator" is expected on a CPU
        calc = calculator.SevenNetCalculator(model=str(path), device=device, **card.options)
    return SevenNetPotential(card, calc, device=device, dtype=dtype or "float32", cutoff=float(calc.cutoff))


class _SevenNetTrainable(Trainable):
    """Test-time training view of a SevenNet ``AtomGraphSequential``. Representation (trained):
    ``edge_embedding`` (learnable radial basis), ``onehot_to_feature_x`` (species embedding) and
    every interaction block ``<i>_self_connection_intro``, ``<i>_self_interaction_1/2``,
    ``<i>_convolution`` (gates and outros have no weights). Head (frozen): every module after the
    last block -- ``reduce_input_to_hidden``, ``reduce_hidden_to_energy`` and the per-species
    ``rescale_atomic_energy``. Float32, as sevenn trains; train mode makes its force output keep
    the graph (``create_graph=self.training``)."""

    def __init__(self, potential: SevenNetPotential):
        self.card, self.device, self.dtype = potential.card, potential.device, potential.dtype
        calc = potential.calculator
        self.module = copy.deepcopy(calc.model)
        self.cutoff, self.modal = float(calc.cutoff), calc.modal
        names = list(self.module._modules)
        last_block = max(i for i, name in enumerate(names) if re.match(r"\d+_", name))
        self._head = tuple(f"{name}." for name in names[last_block + 1:])

    def is_representation(self, parameter_name: str) -> bool:
        return not parameter_name.startswith(self._head)

    def energy_forces(self, atoms):
        keys = require_module(self.card, "sevenn._keys")
        graph = require_module(self.card, "sevenn.atom_graph_data").AtomGraphData
        to_graph = require_module(self.card, "sevenn.train.dataload").unlabeled_atoms_to_graph
        data = graph.from_numpy_dict(to_graph(atoms, self.cutoff))
        if self.modal:
            data[keys.DATA_MODALITY] = self.modal
        out = self.module(data.to(self.device))
        return out[keys.PRED_TOTAL_ENERGY].reshape(()), out[keys.PRED_FORCE][:len(atoms)]

    def potential(self) -> SevenNetPotential:
        calculator = require_module(self.card, "sevenn.calculator")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            calc = calculator.SevenNetCalculator(model=self.module, file_type="model_instance", device=self.device,
                                                 **self.card.options)
        return SevenNetPotential(self.card, calc, device=self.device, dtype=self.dtype, cutoff=float(calc.cutoff))
