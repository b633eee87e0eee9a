"""Evaluation tasks (OC20, Matbench Discovery, OOD shift, TTR, symmetry) and the runner."""
