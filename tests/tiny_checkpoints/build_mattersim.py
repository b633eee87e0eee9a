"""A tiny MatterSim (M3GNet) model, saved by MatterSim's own ``Potential.save``: the dict of
model_name, model state dict, model_args, optimizer/EMA/scheduler states and metadata that the
published mattersim-v1.0.0-*.pth checkpoints are.

usage: python build_mattersim.py OUT.pth UNSAFE.pth   (UNSAFE: the M3Gnet module pickled whole, for the loading gate)
"""

import json
import sys

import torch
from mattersim.forcefield.m3gnet.m3gnet import M3Gnet
from mattersim.forcefield.potential import Potential

torch.manual_seed(0)
model = M3Gnet(num_blocks=1, units=8, max_l=2, max_n=2, cutoff=5.0, threebody_cutoff=4.0, device="cpu")
potential = Potential(model, device="cpu")
potential.save(sys.argv[1])
torch.save(model, sys.argv[2])
print(json.dumps({"params": sum(p.numel() for p in model.parameters())}))
