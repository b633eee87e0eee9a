"""ASE's effective-medium theory: the exact, free baseline that labels our mini data sets."""

from __future__ import annotations

from mlip_zoo.zoo.potential import CalculatorPotential


def load(card, files, *, device, dtype):
    from ase.calculators.emt import EMT

    # EMT is analytic numpy code: always float64 on the CPU, whatever was asked.
    return CalculatorPotential(card, EMT(**card.options), device="cpu", dtype="float64", cutoff=card.cutoff)
