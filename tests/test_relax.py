"""The shared relaxer gives ASE's own answer, honours FixAtoms and cell filters, and stops
relaxations that explode."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import add_adsorbate, bulk, fcc111
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE, LBFGS

from mlip_zoo.evaluators.relax import RelaxationExploded, RelaxProtocol, relax
from mlip_zoo.zoo import CalculatorPotential, get_card, load_potential

OC20 = RelaxProtocol(optimizer="LBFGS", fmax=0.02, steps=300,
                     optimizer_kwargs={"maxstep": 0.2, "memory": 50, "damping": 1.2, "alpha": 80.0})


def slab():
    atoms = fcc111("Pt", (2, 2, 3), vacuum=7.0)
    add_adsorbate(atoms, "O", 2.2, "ontop")
    atoms.set_constraint(FixAtoms(mask=atoms.get_tags() > 1))
    atoms.rattle(0.05, seed=4)
    return atoms


def test_same_answer_as_a_plain_ase_lbfgs_loop():
    start = slab()
    ours = relax(start, load_potential("emt"), OC20)
    ref = start.copy()
    ref.calc = EMT()
    opt = LBFGS(ref, logfile=None, maxstep=0.2, memory=50, damping=1.2, alpha=80.0)
    converged = opt.run(fmax=0.02, steps=300)
    assert ours.converged == converged and ours.steps == opt.nsteps
    # Round-off only: the plain loop reuses EMT's neighbour list between steps, ours rebuilds it.
    assert ours.energy == pytest.approx(ref.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(ours.atoms.positions, ref.positions, atol=1e-8)
    # fixed atoms did not move, and the input was left alone
    fixed = ~np.isin(np.arange(len(start)), np.where(start.get_tags() <= 1)[0])
    np.testing.assert_array_equal(ours.atoms.positions[fixed], start.positions[fixed])
    assert start.calc is None


def test_fire_with_frechet_cell_filter_matches_ase():
    start = bulk("Cu", "fcc", a=3.75, cubic=True)
    start.rattle(0.02, seed=1)
    protocol = RelaxProtocol(optimizer="FIRE", fmax=0.05, steps=500, cell_filter="frechet")
    ours = relax(start, load_potential("emt"), protocol)
    ref = start.copy()
    ref.calc = EMT()
    FIRE(FrechetCellFilter(ref), logfile=None).run(fmax=0.05, steps=500)
    assert ours.converged
    assert ours.energy == pytest.approx(ref.get_potential_energy(), abs=1e-12)
    assert ours.atoms.cell.volume == pytest.approx(ref.cell.volume, rel=1e-12)
    assert ours.atoms.cell.volume < start.cell.volume  # EMT copper is smaller than a = 3.75


class Collapsing(EMT):
    """A pathological model whose energy falls without bound as atoms approach."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        super().calculate(atoms, properties, system_changes or [])
        d = atoms.get_all_distances(mic=True)[np.triu_indices(len(atoms), 1)].min()
        self.results["energy"] -= 1e3 / d
        self.results["forces"] = self.results["forces"] * 50


def test_explosion_is_stopped_and_reported():
    potential = CalculatorPotential(get_card("emt"), Collapsing())
    atoms = bulk("Cu", "fcc", a=3.6) * 2
    atoms.rattle(0.1, seed=0)
    protocol = RelaxProtocol(optimizer="FIRE", fmax=0.01, steps=200, max_energy_drop_per_atom=1.0,
                             optimizer_kwargs={"maxstep": 1.0})
    with pytest.raises(RelaxationExploded, match="energy fell|moved"):
        relax(atoms, potential, protocol)
