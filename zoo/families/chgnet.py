"""CHGNet (Deng et al., 2023). Its checkpoints are plain tensors and dicts, so we load them with
``torch.load(weights_only=True)`` ourselves instead of the package's unrestricted loader."""

from __future__ import annotations

import copy
import warnings

from mlip_zoo.zoo.potential import CalculatorPotential
from mlip_zoo.zoo.registry import require_module
from mlip_zoo.zoo.ttt import Trainable


class CHGNetPotential(CalculatorPotential):
    """CHGNet behind its ASE calculator, plus the hooks of the methods only some families have."""

    def _trainable(self) -> Trainable:
        return _CHGNetTrainable(self)

    def _swap_graph_radius(self, radius: float) -> float:
        # The atom-graph radius; the 3 Å bond (angle) graph and the radial basis stay as trained.
        converter = self.calculator.model.graph_converter
        previous, converter.atom_graph_cutoff = converter.atom_graph_cutoff, radius
        return previous


def load(card, files, *, device, dtype):
    # chgnet converts a grad-tracking volume tensor on every call; harmless, and it floods logs.
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True", module="chgnet")
    # pymatgen says so for every noble-gas structure CHGNet featurises (He, Ne, Ar in eos/diatomics);
    # CHGNet does not use the value, and the line would repeat through a whole run's output.
    warnings.filterwarnings("ignore", message="No Pauling electronegativity", category=UserWarning)
    torch = require_module(card, "torch")
    model_mod = require_module(card, "chgnet.model")
    dynamics = require_module(card, "chgnet.model.dynamics")
    (path,) = files.values()
    state = torch.load(path, map_location="cpu", weights_only=True)
    # options carry constructor switches a checkpoint needs (0.2.0: mlp_out_bias=True, as chgnet's own loader sets)
    model = model_mod.CHGNet.from_dict(state["model"], **card.options)
    calc = dynamics.CHGNetCalculator(model=model, use_device=device, on_isolated_atoms="ignore")
    # CHGNet runs in float32; its calculator returns float32-derived numbers we cast to float64.
    return CHGNetPotential(card, calc, device=device, dtype=dtype or "float32")


class _CHGNetTrainable(Trainable):
    """Test-time training view of CHGNet. Head (frozen): everything after the last interaction
    block -- ``readout_norm`` and the energy ``mlp`` -- plus ``composition_model`` (the per-element
    AtomRef, which CHGNet itself never trains) and ``site_wise`` (the magmom readout, not on the
    energy path). Representation (trained): ``atom_embedding``, the bond/angle basis expansions
    and embeddings (``bond_basis_expansion``, ``bond_embedding``, ``bond_weights_ag/bg``,
    ``angle_basis_expansion``, ``angle_embedding``) and every ``atom_conv_layers``,
    ``bond_conv_layers`` and ``angle_layers`` block. Float32, as chgnet's own trainer runs."""

    HEAD = ("readout_norm.", "mlp.", "composition_model.", "site_wise.")

    def __init__(self, potential: CHGNetPotential):
        self.card, self.device, self.dtype = potential.card, potential.device, potential.dtype
        self.module = copy.deepcopy(potential.calculator.model)
        self._adaptor = require_module(self.card, "pymatgen.io.ase").AseAtomsAdaptor

    def is_representation(self, parameter_name: str) -> bool:
        return not parameter_name.startswith(self.HEAD)

    def energy_forces(self, atoms):
        graph = self.module.graph_converter(self._adaptor.get_structure(atoms)).to(self.device)
        out = self.module([graph], task="ef")  # forces: autograd with create_graph=True
        energy = out["e"][0] * (len(atoms) if self.module.is_intensive else 1)  # eV/atom -> eV
        return energy, out["f"][0]

    def potential(self) -> CHGNetPotential:
        dynamics = require_module(self.card, "chgnet.model.dynamics")
        calc = dynamics.CHGNetCalculator(model=self.module, use_device=self.device, on_isolated_atoms="ignore")
        return CHGNetPotential(self.card, calc, device=self.device, dtype=self.dtype)
