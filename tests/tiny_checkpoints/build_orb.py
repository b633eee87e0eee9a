"""A tiny orb-v3 conservative model, saved as orb's published checkpoints are: a state dict
(orb-models loads it with torch.load(weights_only=True) into an architecture built in code).

usage: python build_orb.py OUT.ckpt UNSAFE.ckpt   (UNSAFE: the whole module pickled, for the loading gate)
"""

import json
import sys

import torch
from orb_models.forcefield import pretrained
from orb_models.forcefield.atomic_system import SystemConfig

# Kept in step with the card the test writes (options.architecture_kwargs / system_config).
ARCHITECTURE = {"latent_dim": 8, "base_mlp_hidden_dim": 16, "base_mlp_depth": 1, "head_mlp_hidden_dim": 8,
                "head_mlp_depth": 1, "num_message_passing_steps": 1}
SYSTEM = {"radius": 6.0, "max_num_neighbors": 120}

torch.manual_seed(0)
model = pretrained.orb_v3_conservative_architecture(device="cpu", system_config=SystemConfig(**SYSTEM),
                                                    **ARCHITECTURE)
torch.save(model.state_dict(), sys.argv[1])
torch.save(model, sys.argv[2])
print(json.dumps({"params": sum(p.numel() for p in model.parameters()), "architecture_kwargs": ARCHITECTURE,
                  "system_config": SYSTEM}))
