"""The equation-of-state task (Δ-gauge against WIEN2k all-electron PBE, ASE's dcdft collection)."""
