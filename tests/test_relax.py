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

from mlip_zoo.evaluators.relax import RelaxationExploded, RelaxProtocol, relax, relax_many
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


FIRE_CELL = RelaxProtocol(optimizer="FIRE", fmax=0.05, steps=200, cell_filter="frechet")


def strained_cells():
    cells = []
    for i, (element, a) in enumerate([("Cu", 3.61), ("Ni", 3.52), ("Pt", 3.92), ("Au", 4.08), ("Ag", 4.09)]):
        atoms = bulk(element, "fcc", a=a * 1.03, cubic=True)
        atoms.rattle(0.05, seed=i)
        cells.append(atoms)
    return cells


def test_lockstep_groups_give_the_one_by_one_answers_and_keep_errors_with_their_structure(monkeypatch):
    """Relaxations batched in lockstep give bit for bit what relaxing them one by one gives (EMT's
    predictions do not depend on the batch); a structure that fails takes only itself down."""
    import fake_calcs

    potential = CalculatorPotential(get_card("emt"), fake_calcs.ExplodingEMT())
    cells = strained_cells()
    cells[1].info["explode"] = True  # raises inside the first batched call of its group
    cells.append(bulk("Fe", "bcc", a=2.87, cubic=True))  # not an EMT element: never relaxed
    sizes = []
    one_at_a_time = potential._predict_many

    def counted(batch, stress):
        sizes.append(len(batch))
        return one_at_a_time(batch, stress)

    monkeypatch.setattr(potential, "_predict_many", counted)
    grouped = relax_many(cells, potential, FIRE_CELL, batch_size=4)
    assert max(sizes) == 4 and 3 in sizes  # the first group: 4, then 3 once the exploding one failed
    alone = relax_many(cells, potential, FIRE_CELL, batch_size=1)
    for (g, _), (a, _) in zip(grouped, alone, strict=True):
        if isinstance(a, Exception):
            assert type(g) is type(a) and str(g) == str(a)
            continue
        assert (g.energy, g.steps, g.converged) == (a.energy, a.steps, a.converged) and a.steps > 5
        np.testing.assert_array_equal(g.atoms.positions, a.atoms.positions)
        np.testing.assert_array_equal(g.atoms.cell[:], a.atoms.cell[:])
    assert "blew up" in str(grouped[1][0]) and "Fe" in str(grouped[-1][0])
    assert sum(isinstance(r, Exception) for r, _ in grouped) == 2
