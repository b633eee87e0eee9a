"""Distribution-shift tasks: ood-shift diagnostics and test-time refinement (ttr)."""
