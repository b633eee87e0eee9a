"""The conformance kit (mlip_zoo.zoo.conformance): EMT passes every check to 1e-8 relative, and
models broken on purpose in one known way are caught by the right check, with the size of the
defect they carry."""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.emt import EMT

from mlip_zoo.errors import ConformanceError
from mlip_zoo.zoo import get_card, load_potential
from mlip_zoo.zoo.conformance import (
    ALL_CHECKS,
    SYMMETRY_CHECKS,
    NVEProtocol,
    Protocol,
    StressIrreps,
    Tolerances,
    assert_conformant,
    basic_checks,
    check_finite_difference,
    nve_drift,
    random_rotations,
    run_checks,
    standard_cells,
)
from mlip_zoo.zoo.potential import CalculatorPotential

U = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])  # a fixed lab-frame direction
A = np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # a fixed lab-frame stress, Voigt: xx only
FAST = Protocol(n_rotations=3, fd_components=3, nve=NVEProtocol(steps=60))  # short NVE: tests stay quick


def cu8():
    return standard_cells()[0]


class LabFrameEMT(EMT):
    """EMT plus a uniform external field, E += eps * sum_i u.x_i (forces -eps*u on every atom,
    consistent with the energy), and a constant lab-frame stress eps_stress * A. Neither rotates
    with the structure."""

    def __init__(self, eps: float, eps_stress: float = 0.0):
        super().__init__()
        self.eps, self.eps_stress = eps, eps_stress

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        super().calculate(atoms, properties, system_changes)
        pos = self.atoms.positions
        self.results["energy"] += self.eps * float(np.sum(pos @ U))
        self.results["free_energy"] = self.results["energy"]
        self.results["forces"] = self.results["forces"] - self.eps * U
        if "stress" in self.results:
            self.results["stress"] = self.results["stress"] + self.eps_stress * A


class ScaledForcesEMT(EMT):
    """Forces (1 + eps) times EMT's: perfectly equivariant, but not minus the energy gradient."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        super().calculate(atoms, properties, system_changes)
        self.results["forces"] = (1 + self.eps) * self.results["forces"]


class OffsetEMT(EMT):
    """A constant eps per structure (not per atom): intensive, so a supercell's energy per atom drifts."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        super().calculate(atoms, properties, system_changes)
        self.results["energy"] += self.eps
        self.results["free_energy"] = self.results["energy"]


def test_emt_passes_every_check_to_1e_8_as_potential_and_as_calculator():
    for model in (load_potential("emt"), EMT()):
        reports = assert_conformant(model, [cu8()], protocol=FAST, checks=ALL_CHECKS)
        (report,) = reports
        for name in SYMMETRY_CHECKS:
            assert report[name].passed and report[name].tolerance == 1e-8, report[name].summary()
            assert report[name].worst < 1e-8
        assert report["net_force"].worst < 1e-12
        assert 0 < report["nve"].worst < Tolerances().nve_drift  # a finite time step drifts, a little


@pytest.mark.parametrize("eps", [1e-6, 1e-4, 1e-2])
def test_lab_frame_term_is_caught_with_its_size(eps):
    atoms = cu8()
    model = LabFrameEMT(eps, eps_stress=eps)
    report = run_checks(model, atoms, protocol=FAST, checks=("rotation",))
    ref, _ = basic_checks(model, atoms)
    n = len(atoms)
    rotation = report["rotation"]
    sigma = np.linalg.norm(ref.stress[[0, 1, 2, 3, 4, 5]] * [1, 1, 1, np.sqrt(2), np.sqrt(2), np.sqrt(2)])
    full_a = np.diag([1.0, 0.0, 0.0])
    for k, R in enumerate(random_rotations(FAST.n_rotations, FAST.seed)):
        # F(Rx) - R F(x) = eps (R u - u) on every atom; the stress's lab-frame term breaks only its 2e part.
        expected_abs = eps * np.linalg.norm(R @ U - U)
        assert rotation.detail["forces_abs_max"][k] == pytest.approx(expected_abs, rel=1e-6)
        assert rotation.errors["forces"][k] == pytest.approx(
            np.sqrt(n) * expected_abs / np.linalg.norm(ref.forces), rel=1e-6)
        expected_2e = eps * np.linalg.norm(R @ full_a @ R.T - full_a) / sigma
        assert rotation.errors["stress_2e"][k] == pytest.approx(expected_2e, rel=1e-6)
        assert rotation.errors["stress_0e"][k] < 1e-12  # the trace of a constant tensor is invariant
    assert rotation.passed is (rotation.worst <= 1e-8)
    assert not rotation.passed  # eps >= 1e-6 breaks 1e-8
    # The energy term is consistent with its forces: finite differences see nothing wrong.
    assert run_checks(model, atoms, protocol=FAST, checks=("finite_difference",))["finite_difference"].passed


def test_errors_scale_linearly_with_the_term():
    atoms = cu8()
    energy_change = {}
    for eps in (1e-6, 1e-4):
        model = LabFrameEMT(eps)
        report = run_checks(model, atoms, protocol=FAST, checks=("rotation", "translation"))
        ref, _ = basic_checks(model, atoms)
        # relative errors divide by |E(x)|, which itself moves by eps * sum(u.x): undo that to compare
        energy_change[eps] = {c: np.array(report[c].errors["energy"]) * abs(ref.energy)
                              for c in ("rotation", "translation")}
        assert report["rotation"].detail["forces_abs_max"][0] == pytest.approx(
            eps * np.linalg.norm(random_rotations(FAST.n_rotations, FAST.seed)[0] @ U - U), rel=1e-6)
    for check in ("rotation", "translation"):
        np.testing.assert_allclose(energy_change[1e-4][check] / energy_change[1e-6][check], 100, rtol=1e-6)


def test_assert_conformant_names_the_check_and_the_size():
    with pytest.raises(AssertionError) as info:
        assert_conformant(LabFrameEMT(1e-5), [cu8()], protocol=FAST)
    text = str(info.value)
    assert "rotation: FAIL" in text and "translation: FAIL" in text
    assert "net_force" not in text  # 8 atoms x 1e-5 eV/Å is below the net-force bound: rotation catches it
    assert "permutation" not in text and "finite_difference" not in text


@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_non_conservative_forces_are_caught_by_finite_differences(eps):
    atoms = cu8()
    model = ScaledForcesEMT(eps)
    ref, _ = basic_checks(model, atoms)
    result = check_finite_difference(model, atoms, ref, FAST)
    rms = np.linalg.norm(ref.forces) / np.sqrt(3 * len(atoms))
    for comp, err in zip(result.detail["components"], result.errors["forces"]):
        # F_model = (1 + eps) F_true and F_fd = F_true (to ~1e-9), so the error is eps/(1+eps) |F|.
        assert err == pytest.approx(eps / (1 + eps) * abs(comp["model"]) / rms, rel=1e-3, abs=1e-8)
    assert not result.passed
    assert run_checks(model, atoms, protocol=FAST, checks=("rotation",))["rotation"].passed  # still equivariant


def test_an_intensive_term_breaks_supercell_consistency_by_its_size():
    eps, atoms = 1e-3, cu8()
    model = OffsetEMT(eps)
    report = run_checks(model, atoms, protocol=FAST, checks=("supercell", "rotation"))
    ref, _ = basic_checks(model, atoms)
    n, k = len(atoms), 8
    expected = eps * (1 - 1 / k) / max(abs(ref.energy), n * 1e-3)
    assert report["supercell"].errors["energy"][0] == pytest.approx(expected, rel=1e-6)
    assert not report["supercell"].passed and report["rotation"].passed


def test_mutating_calculator_is_caught():
    class Wrapping(EMT):
        def calculate(self, atoms=None, properties=("energy",), system_changes=()):
            atoms.positions[0] += 0.01  # "fixes" the caller's structure in place
            super().calculate(atoms, properties, system_changes)

    _, checks = basic_checks(Wrapping(), cu8())
    mutation = next(c for c in checks if c.name == "no_mutation")
    assert not mutation.passed and mutation.detail["changed"] == ["positions"]


def test_a_model_that_raises_is_named_with_the_check_and_structure():
    class OrthogonalOnly(EMT):
        def calculate(self, atoms=None, properties=("energy",), system_changes=()):
            cell = atoms.cell.array
            if np.abs(cell - np.diag(np.diag(cell))).max() > 1e-9:
                raise ValueError("only orthogonal cells")
            super().calculate(atoms, properties, system_changes)

    with pytest.raises(ConformanceError, match=r"OrthogonalOnly raised during the rotation check on "
                                               r"structure id=check-Cu8: ValueError: only orthogonal cells"):
        run_checks(OrthogonalOnly(), cu8(), protocol=FAST, checks=("rotation",))


def test_potential_must_not_attach_a_calculator():
    class Attaching(CalculatorPotential):
        def predict(self, batch, properties=("energy", "forces", "stress")):
            out = super().predict(batch, properties)
            batch[0].calc = self.calculator
            return out

    _, checks = basic_checks(Attaching(get_card("emt"), EMT()), cu8())
    assert next(c for c in checks if c.name == "no_mutation").detail["changed"] == ["calc"]


def test_random_rotations_are_seeded_proper_and_leave_torch_alone():
    torch = pytest.importorskip("torch")
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = random_rotations(5, seed=3), random_rotations(5, seed=3)
    assert torch.rand(1) == before  # torch's global stream did not move
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, random_rotations(5, seed=4))
    for R in a:
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-14)
        assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-14)


def test_stress_irreps_are_an_orthonormal_split_that_rotates_with_wigner_matrices():
    irreps = StressIrreps()
    assert list(irreps.slices) == ["0e", "2e"]
    rng = np.random.default_rng(0)
    m = rng.normal(size=(3, 3))
    sym = m + m.T
    voigt = sym[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    parts = irreps.split(voigt)
    assert np.linalg.norm(parts) == pytest.approx(np.linalg.norm(sym), rel=1e-14)
    assert parts[irreps.slices["0e"]][0] == pytest.approx(np.trace(sym) / np.sqrt(3), rel=1e-14)
    pressure = irreps.split([2.0, 2.0, 2.0, 0.0, 0.0, 0.0])
    assert np.abs(pressure[irreps.slices["2e"]]).max() < 1e-15
    for R in random_rotations(3, seed=1):
        turned = R @ sym @ R.T
        np.testing.assert_allclose(irreps.split(turned[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]),
                                   irreps.wigner(R) @ parts, atol=1e-13)


def test_nve_drift_follows_the_reducer_definition():
    dt = 0.001  # ps
    n = 40  # drop int(0.1 * 40) = 4 -> 36 kept; 20-point windows x[k:k+20] for k < 16 -> 16 values
    times = np.arange(n) * dt
    rate = 0.5  # eV/atom/ps
    energy = -3.0 + rate * times
    # smoothed values are window means: their ends differ by rate*dt*15; duration is t[39] - t[4]
    expected = 1000 * rate * dt * 15 / (times[-1] - times[4])
    assert nve_drift(times, energy) == pytest.approx(expected, rel=1e-12)
    assert nve_drift(times, np.full(n, -3.0)) == 0.0
    with pytest.raises(ValueError, match="run more steps"):
        nve_drift(times[:20], energy[:20])


def test_unknown_check_is_refused_with_the_list():
    with pytest.raises(ValueError, match="unknown conformance checks.*known: shapes"):
        run_checks(EMT(), cu8(), checks=("rotatoin",))


def test_float32_preset_is_looser_and_named():
    loose = Tolerances.float32()
    assert loose.rotation > Tolerances().rotation and loose.finite_difference > Tolerances().finite_difference
    assert loose.of("nve") == loose.nve_drift
