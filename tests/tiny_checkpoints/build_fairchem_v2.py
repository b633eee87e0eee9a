"""A tiny UMA/eSEN-style fairchem v2 model, saved as the published UMA and eSEN checkpoints are:
a pickled ``MLIPInferenceCheckpoint`` (the hydra model config, the model and EMA state dicts,
the tasks config) that ``load_predict_unit`` reads with ``torch.load(weights_only=False)`` and
rebuilds with ``hydra.utils.instantiate``. One conservative eSCN-MD backbone with an energy head;
forces and stress are gradients, as in eSEN-30M-OAM and UMA's omat task.

usage: python build_fairchem_v2.py OUT.pt UNSAFE.pt   (the same file twice: the format itself is a full pickle)
"""

import json
import sys

import hydra
import torch
from fairchem.core.units.mlip_unit.api.inference import MLIPInferenceCheckpoint

TASK = "omat"
BACKBONE = {
    "model": "fairchem.core.models.uma.escn_md.eSCNMDBackbone",
    "max_num_elements": 100, "sphere_channels": 8, "lmax": 1, "mmax": 1, "otf_graph": True,
    "max_neighbors": 300, "cutoff": 6.0, "edge_channels": 8, "distance_function": "gaussian",
    "num_distance_basis": 16, "direct_forces": False, "regress_forces": True, "regress_stress": True,
    "num_layers": 1, "hidden_channels": 8, "norm_type": "rms_norm_sh", "act_type": "gate", "ff_type": "grid",
    "dataset_list": [TASK], "always_use_pbc": False,
}
MODEL = {"_target_": "fairchem.core.models.base.HydraModel", "backbone": BACKBONE,
         "heads": {"efs": {"module": "fairchem.core.models.uma.escn_md.MLP_EFS_Head"}},
         "pass_through_head_outputs": True}


def task(prop, level, dim):
    # Named by property alone, as eSEN-30M-OAM's single-dataset tasks are (UMA's mixture-of-experts
    # heads name theirs per dataset, e.g. omat_energy); the calculator picks them by dataset.
    return {"_target_": "fairchem.core.units.mlip_unit.mlip_unit.Task", "name": prop,
            "level": level, "property": prop, "out_spec": {"dim": dim, "dtype": "float32"},
            "normalizer": {"_target_": "fairchem.core.modules.normalization.normalizer.Normalizer",
                           "mean": 0.0, "rmsd": 1.0},
            "datasets": [TASK]}


TASKS = [task("energy", "system", [1]), task("forces", "atom", [3]), task("stress", "system", [1, 9])]

torch.manual_seed(0)
model = hydra.utils.instantiate(MODEL)
ema = torch.optim.swa_utils.AveragedModel(model)
checkpoint = MLIPInferenceCheckpoint(model_config=MODEL, model_state_dict=model.state_dict(),
                                     ema_state_dict=ema.state_dict(), tasks_config=TASKS)
torch.save(checkpoint, sys.argv[1])
torch.save(checkpoint, sys.argv[2])
print(json.dumps({"params": sum(p.numel() for p in model.parameters())}))
