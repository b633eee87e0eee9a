"""Every runnable model family loads its real, sha256-verified weights and predicts.

Slow-ish (a few seconds per model) and marked so, but CI runs it.
"""

from __future__ import annotations

import numpy as np
import pytest

from mlip_zoo.zoo import get_card, load_potential
from mlip_zoo.zoo.check import smoke_check

RUNNABLE = ["emt", "gfn2-xtb", "chgnet-0.3.0", "chgnet-0.2.0", "chgnet-r2scan", "sevennet-0", "sevennet-l3i5",
            "sevennet-mf-0", "diep-fold1"]


@pytest.mark.slow
@pytest.mark.parametrize("key", RUNNABLE)
def test_runnable_model_loads_real_weights_and_predicts(key):
    potential = load_potential(key, device="cpu")
    report = smoke_check(potential)
    assert report.ok, report.problems
    assert np.isfinite(report.energy)
    assert report.net_force < 1e-3
    assert report.stress is not None and len(report.stress) == 6  # every runnable card targets stress
    assert 0.01 < report.max_force < 50  # a rattled cell has real, finite forces
    # Energy per atom of the Cu cell on each method's own reference scale: PBE-trained models near
    # Cu's PBE total energy (~-4.1 eV/atom), r2SCAN-trained ones near its r2SCAN value (~-10.8),
    # EMT near 0 (cohesive-energy referenced), GFN2-xTB on its electronic scale. Wrong weights or
    # units land far outside these windows.
    r2scan = {"chgnet-r2scan", "diep-fold1"}
    lo, hi = {"emt": (-0.5, 0.5), "gfn2-xtb": (-200.0, -50.0)}.get(key, (-12.0, -9.5) if key in r2scan else (-5.0, -3.0))
    assert lo < report.energy_per_atom < hi, report.energy_per_atom


@pytest.mark.slow
def test_model_families_agree_on_copper_within_dft_noise():
    """CHGNet 0.3.0 and SevenNet-0 are both MPtrj-trained: on the same cell their energies per
    atom should agree to ~0.1 eV/atom. A mix-up of weights or units would break this."""
    from mlip_zoo.zoo.check import check_cells

    cu = check_cells()[0]
    e = {k: load_potential(k).predict([cu])[0].energy / len(cu) for k in ("chgnet-0.3.0", "sevennet-0")}
    assert abs(e["chgnet-0.3.0"] - e["sevennet-0"]) < 0.1, e


@pytest.mark.slow
def test_sevennet_mf_uses_the_card_modal():
    pot = load_potential("sevennet-mf-0")
    assert get_card("sevennet-mf-0").options == {"modal": "PBE"}
    assert pot.calculator.modal == "PBE"


@pytest.mark.slow
def test_sevennet_batched_path_matches_single_calls():
    """SevenNet's batched graph (the GPU relaxation path) gives each structure its single-call
    prediction up to float32 round-off, and lockstep relaxations on it the one-by-one answers."""
    from ase.build import bulk

    from mlip_zoo.evaluators.relax import RelaxProtocol, relax_many

    potential = load_potential(get_card("sevennet-0"))
    cells = []
    for i, (element, a) in enumerate([("Cu", 3.61), ("Ni", 3.52), ("Al", 4.04)]):
        atoms = bulk(element, "fcc", a=a * 1.02, cubic=True)
        atoms.rattle(0.05, seed=i)
        cells.append(atoms)
    cells.append(bulk("Fe", "bcc", a=2.87) * (2, 1, 1))
    batched = potential.predict(cells)
    for atoms, b in zip(cells, batched, strict=True):
        (alone,) = potential.predict([atoms])
        assert b.energy == pytest.approx(alone.energy, abs=2e-5)
        np.testing.assert_allclose(b.forces, alone.forces, atol=2e-5)
        np.testing.assert_allclose(b.stress, alone.stress, atol=2e-6)
    protocol = RelaxProtocol(optimizer="FIRE", fmax=0.05, steps=100, cell_filter="frechet")
    grouped = relax_many(cells[:3], potential, protocol, batch_size=3)
    single = relax_many(cells[:3], potential, protocol, batch_size=1)
    for (g, _), (s, _) in zip(grouped, single, strict=True):
        assert g.converged == s.converged and abs(g.steps - s.steps) <= 2
        assert abs(g.energy - s.energy) / len(g.atoms) < 1e-5
