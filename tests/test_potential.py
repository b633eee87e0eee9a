"""The Potential contract, on EMT and small fakes where a real model is not the point."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.emt import EMT
from ase.optimize import BFGS

from mlip_zoo.errors import MissingExtraError, NonFiniteOutputError, PropertyNotSupportedError, UnsupportedElementError
from mlip_zoo.zoo import CalculatorPotential, get_card, load_potential, read_card
from mlip_zoo.zoo.check import smoke_check
from mlip_zoo.zoo.registry import require_module


def rattled_cu():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1)
    atoms.rattle(0.05, seed=1)
    return atoms


def test_emt_potential_equals_ase_emt_exactly():
    pot = load_potential("emt")
    atoms = rattled_cu()
    (pred,) = pot.predict([atoms])
    ref = atoms.copy()
    ref.calc = EMT()
    assert pred.energy == ref.get_potential_energy()
    np.testing.assert_array_equal(pred.forces, ref.get_forces())
    np.testing.assert_array_equal(pred.stress, ref.get_stress(voigt=True))  # Voigt xx yy zz yz xz xy
    assert pred.forces.dtype == np.float64 and pred.stress.shape == (6,)


def test_predict_does_not_touch_its_input_and_handles_batches():
    pot = load_potential("emt")
    batch = [rattled_cu(), bulk("Al", "fcc", a=4.05) * 2]
    before = [a.copy() for a in batch]
    preds = pot.predict(batch)
    assert [len(p.forces) for p in preds] == [16, 8]
    for a, b in zip(batch, before):
        assert a.calc is None and np.array_equal(a.positions, b.positions)


def test_unsupported_element_names_the_structure():
    pot = load_potential("emt")
    atoms = bulk("Fe", "bcc", a=2.87)
    atoms.info["sid"] = "fe-42"
    with pytest.raises(UnsupportedElementError, match=r"sid=fe-42 contains Fe.*emt"):
        pot.predict([atoms])


class NaNCalc(EMT):
    def calculate(self, *args, **kwargs):
        super().calculate(*args, **kwargs)
        self.results["forces"][0, 0] = np.nan


def test_nan_never_passes_silently():
    pot = CalculatorPotential(get_card("emt"), NaNCalc())
    atoms = rattled_cu()
    atoms.info["id"] = "cu-nan"
    with pytest.raises(NonFiniteOutputError, match=r"non-finite forces for structure id=cu-nan") as info:
        pot.predict([atoms])
    assert info.value.structure == "id=cu-nan"


def test_as_calculator_drives_an_ase_optimizer():
    pot = load_potential("emt")
    atoms = rattled_cu()
    atoms.calc = pot.as_calculator()
    BFGS(atoms, logfile=None).run(fmax=0.01, steps=200)
    assert np.abs(atoms.get_forces()).max() < 0.01
    ref = atoms.copy()
    ref.calc = EMT()
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-12)


def test_energy_only_card_refuses_stress(card_dir):
    card = read_card(card_dir("emt-ef", """\
        key: emt-ef
        name: EMT without stress
        version: "1"
        family: emt
        license: MIT
        targets: EF
        """))
    pot = load_potential(card)
    atoms = rattled_cu()
    (pred,) = pot.predict([atoms])
    assert pred.stress is None
    atoms.calc = pot.as_calculator()
    with pytest.raises(PropertyNotImplementedError):  # ASE's own contract for a missing property
        atoms.get_stress()
    with pytest.raises(PropertyNotSupportedError, match="does not predict stress"):
        pot.require("stress")


def test_generic_ase_family_loads_any_calculator(card_dir):
    card = read_card(card_dir("lj-argon", """\
        key: lj-argon
        name: Lennard-Jones argon
        version: "1"
        family: ase
        calculator: "ase.calculators.lj:LennardJones"
        calculator_kwargs: {sigma: 3.4, epsilon: 0.0104, rc: 8.5}
        license: LGPL-2.1-or-later
        targets: EFS
        elements: [Ar]
        """))
    pot = load_potential(card)
    atoms = bulk("Ar", "fcc", a=5.26) * 2
    atoms.rattle(0.02, seed=3)
    report = smoke_check(pot)
    assert report.ok
    assert pot.predict([atoms])[0].energy < 0


def test_missing_extra_says_which_pip_install():
    card = get_card("mace-mp-0b3-medium")
    with pytest.raises(MissingExtraError, match=r"pip install 'mlip-zoo\[mace\]'"):
        require_module(card, "mace_package_that_is_not_installed.calculators")


def test_smoke_check_catches_a_net_force(card_dir):
    class Pushy(EMT):
        def calculate(self, *args, **kwargs):
            super().calculate(*args, **kwargs)
            self.results["forces"] = self.results["forces"] + 0.01  # uniform push: not translation invariant

    report = smoke_check(CalculatorPotential(get_card("emt"), Pushy()))
    assert not report.ok
    assert "net force" in report.problems[0]
    assert report.net_force == pytest.approx(0.01 * np.sqrt(3) * report.n_atoms, rel=1e-9)


def test_device_auto_resolves_on_cpu():
    from mlip_zoo.zoo.potential import resolve_device

    torch = pytest.importorskip("torch")
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")


def test_molecule_without_cell_is_fine_for_emt():
    pot = load_potential("emt")
    (pred,) = pot.predict([molecule("CO")], properties=("energy", "forces"))
    assert np.isfinite(pred.energy) and pred.stress is None


@pytest.mark.parametrize("pairwise_atoms", [128, 0])  # every pair at once; the k-d tree
def test_closest_pair_agrees_with_ase_neighbour_list(pairwise_atoms, monkeypatch):
    """Random skewed cells, periodic along some axes, with near-coincident atoms planted."""
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    from mlip_zoo.zoo import potential as pot

    monkeypatch.setattr(pot, "PAIRWISE_ATOMS", pairwise_atoms)
    rng = np.random.default_rng(7)
    cutoff, found = 0.6, 0
    for trial in range(300):
        n = int(rng.integers(1, 12))
        cell = np.diag(rng.uniform(1.5, 5.0, 3)) + rng.uniform(-1.0, 1.0, (3, 3)) * 0.6
        pbc = rng.random(3) < 0.7
        positions = rng.random((n, 3)) @ cell
        if n > 1 and trial % 2:  # a close pair, possibly across the cell boundary
            positions[1] = positions[0] + rng.normal(size=3) * 0.2 + (cell[0] if pbc[0] else 0)
        atoms = Atoms("H" * n, positions=positions, cell=cell, pbc=pbc)
        heights = 1.0 / np.linalg.norm(np.linalg.inv(atoms.cell.complete()), axis=0)
        if np.any(heights[pbc] <= 2 * cutoff):
            continue
        i, j, d = neighbor_list("ijd", atoms, cutoff)
        got = pot.closest_pair(atoms, cutoff)
        if len(d) == 0:
            assert got is None, trial
            continue
        found += 1
        assert got is not None and got[2] == pytest.approx(d.min(), abs=1e-9), trial
        assert {got[0], got[1]} in ({int(a), int(b)} for a, b in zip(i[d == d.min()], j[d == d.min()], strict=True))
    assert found > 50
