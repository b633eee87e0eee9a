"""The homonuclear diatomics task (VASP PBE/r2SCAN curves from matbench-discovery)."""
