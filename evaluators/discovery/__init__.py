"""Matbench Discovery tasks: discovery (IS2RE-SR) and geo-opt, on WBM-layout data."""
