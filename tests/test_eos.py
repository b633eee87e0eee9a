"""The ``eos`` task: the Birch–Murnaghan fit and Δ, the dcdft set, EMT end to end, SevenNet-0."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pytest
from ase.eos import EquationOfState
from ase.io import read
from ase.units import GPa
from scipy.integrate import quad
from typer.testing import CliRunner

from mlip_zoo.cli import app
from mlip_zoo.evaluators.base import evaluator_for, load_task_config
from mlip_zoo.evaluators.data import datasets_dir, resolve_dataset
from mlip_zoo.evaluators.eos.delta import (EV_PER_A3_IN_GPA, EOSFitError, birch_murnaghan_energy, delta,
                                           fit_birch_murnaghan, fit_birch_murnaghan_many)
from mlip_zoo.evaluators.eos.make_dataset import generate
from mlip_zoo.evaluators.uncertainty import intervals
from mlip_zoo.zoo import load_potential

DCDFT = datasets_dir() / "dcdft-wien2k" / "dcdft.extxyz"
FACTORS = np.linspace(0.94, 1.06, 7)
CU = (11.9511, 141.335, 4.86)  # WIEN2k V0 (Å³/atom), B0 (GPa), B1 of fcc Cu
AL = (16.4796, 78.077, 4.57)


def records(*elements):
    return [a for a in read(DCDFT, index=":") if a.get_chemical_symbols()[0] in elements]


def table(evaluator, rows):
    return pa.Table.from_pylist(rows, schema=evaluator.schema)


def calc_delta_analytic(a, b):
    """Δ as calcDelta integrates it: both BM curves as polynomials in V^(-2/3) and the squared
    difference integrated term by term (an independent route to the same number)."""
    def coefficients(v0, b0, b1):
        b0 = b0 / EV_PER_A3_IN_GPA
        return np.array([9 * v0 * b0 / 16 * (6 - b1), 9 * v0 ** (5 / 3) * b0 / 16 * (3 * b1 - 16),
                         9 * v0 ** (7 / 3) * b0 / 16 * (14 - 3 * b1), 9 * v0**3 * b0 / 16 * (b1 - 4)])

    d = coefficients(*a) - coefficients(*b)  # of V^0, V^(-2/3), V^(-4/3), V^(-2)
    square = np.convolve(d, d)  # of V^(-2n/3), n = 0..6
    mean_v0 = (a[0] + b[0]) / 2
    vi, vf = 0.94 * mean_v0, 1.06 * mean_v0

    def antiderivative(v):
        return sum(c * 3 / (3 - 2 * n) * v ** ((3 - 2 * n) / 3) for n, c in enumerate(square))

    return 1000 * np.sqrt((antiderivative(vf) - antiderivative(vi)) / (vf - vi))


# --- Δ and the fit --------------------------------------------------------------------------


def test_delta_of_a_curve_with_itself_is_zero():
    assert delta(*CU, *CU) == 0.0
    assert np.all(delta(np.array([CU[0], AL[0]]), [CU[1], AL[1]], [CU[2], AL[2]],
                        [CU[0], AL[0]], [CU[1], AL[1]], [CU[2], AL[2]]) == 0.0)


@pytest.mark.parametrize("shift", [0.001, 0.01, 0.03])
def test_delta_of_a_volume_shift_matches_direct_integration(shift):
    shifted = (CU[0] * (1 + shift), CU[1], CU[2])
    mean_v0 = (CU[0] + shifted[0]) / 2
    vi, vf = 0.94 * mean_v0, 1.06 * mean_v0
    integral, _ = quad(lambda v: (birch_murnaghan_energy(v, *shifted) - birch_murnaghan_energy(v, *CU)) ** 2,
                       vi, vf, epsabs=0, epsrel=1e-13)
    direct = 1000 * np.sqrt(integral / (vf - vi))
    assert delta(*shifted, *CU) == pytest.approx(direct, rel=1e-11)
    assert delta(*shifted, *CU) == pytest.approx(calc_delta_analytic(shifted, CU), rel=1e-6)
    assert delta(*CU, *shifted) == pytest.approx(delta(*shifted, *CU), rel=1e-12)  # symmetric


def test_delta_of_different_b0_and_b1_matches_calc_delta():
    other = (12.1, 150.0, 5.3)
    # 40-digit quadrature of the BM curves (mpmath): the quadrature is exact to round-off...
    assert delta(*other, *CU) == pytest.approx(4.972044618368129462615761727807730282631, rel=1e-12)
    # ...while calcDelta's expanded antiderivative loses ~9 digits to cancellation
    assert delta(*other, *CU) == pytest.approx(calc_delta_analytic(other, CU), rel=1e-8)


def test_bm_energy_has_its_minimum_zero_at_v0():
    v = CU[0] * np.linspace(0.9, 1.1, 2001)
    e = birch_murnaghan_energy(v, *CU)
    assert birch_murnaghan_energy(CU[0], *CU) == 0.0 and e.min() >= 0.0
    assert v[np.argmin(e)] == pytest.approx(CU[0], rel=1e-4)


@pytest.mark.parametrize("eos", [CU, AL, (17.7708, 0.847, 7.71), (11.4473, 118.632, -0.21)])  # Cu, Al, He, Mn
def test_fit_recovers_exact_bm_parameters(eos):
    volumes = eos[0] * FACTORS * 1.01  # minimum off the centre of the points
    energies = birch_murnaghan_energy(volumes, *eos) - 3.21
    fit = fit_birch_murnaghan(volumes, energies)
    assert fit.v0 == pytest.approx(eos[0], rel=1e-6)
    assert fit.b0 == pytest.approx(eos[1], rel=1e-6)
    assert fit.b1 == pytest.approx(eos[2], rel=1e-6, abs=1e-6)


def test_fits_many_at_once_name_each_failure():
    volumes = np.array([CU[0] * FACTORS, CU[0] * FACTORS, CU[0] * FACTORS, CU[0] * FACTORS])
    energies = np.array([birch_murnaghan_energy(volumes[0], *CU),
                         birch_murnaghan_energy(volumes[1], CU[0] * 1.2, *CU[1:]),  # minimum beyond the points
                         -birch_murnaghan_energy(volumes[2], *CU),  # a maximum, no minimum
                         np.full(7, np.nan)])
    fits = fit_birch_murnaghan_many(volumes, energies)
    assert fits.ok.tolist() == [True, False, False, False]
    assert fits.v0[0] == pytest.approx(CU[0], rel=1e-6) and np.isnan(fits.v0[1:]).all()
    assert "above the computed volumes" in fits.reasons[1]
    assert "no minimum" in fits.reasons[2]
    assert "not finite" in fits.reasons[3]
    with pytest.raises(EOSFitError, match="above the computed volumes"):
        fit_birch_murnaghan(volumes[1], energies[1])


def test_a_flat_curve_is_named_not_fitted():
    """A model that sees no change (Cs's neighbours beyond its cutoff) gives a flat curve: its
    cubic would fit round-off, so it fails with its span named; a soft but real curve (WIEN2k Cs)
    is fitted."""
    cs = (117.08, 1.98, 3.65)  # WIEN2k Cs: V0 Å³/atom, B0 GPa, B1
    volumes = np.array([cs[0] * FACTORS] * 3)
    energies = np.array([np.full(7, -0.85),  # exactly flat
                         -0.85 + 1.2e-7 * (np.arange(7) % 2),  # float32's last bit flickering
                         birch_murnaghan_energy(volumes[2], *cs)])
    fits = fit_birch_murnaghan_many(volumes, energies)
    assert fits.ok.tolist() == [False, False, True]
    assert fits.reasons[0].startswith("flat: the energies span 0 eV/atom")
    assert "1.2e-07 eV/atom" in fits.reasons[1]
    assert fits.b0[2] == pytest.approx(cs[1], rel=1e-6)


# --- The dataset ----------------------------------------------------------------------------


def test_dcdft_regenerates_byte_identically(tmp_path):
    manifest = generate(tmp_path)
    shipped = json.loads((datasets_dir() / "dcdft-wien2k" / "manifest.json").read_text())
    assert manifest == shipped
    assert (tmp_path / "dcdft.extxyz").read_bytes() == DCDFT.read_bytes()
    assert "mini" not in manifest["label"] and manifest["files"]["dcdft.extxyz"]["n"] == 71
    assert "aad3000" in manifest["citation"] and manifest["energy"].startswith("none")
    crystals = read(DCDFT, index=":")
    assert len({a.get_chemical_symbols()[0] for a in crystals}) == 71
    fluorine = next(a for a in crystals if a.get_chemical_symbols()[0] == "F")
    assert fluorine.info["id"] == "dcdft-F" and fluorine.info["wien2k_volume"] == 19.1666
    assert resolve_dataset("dcdft-wien2k", "dcdft.extxyz").name == manifest["label"]


# --- The task -------------------------------------------------------------------------------


def bm_rows(evaluator, elements_eos, failed=()):
    """Rows as the task writes them, energies from exact BM curves."""
    rows = []
    for el, (ref, model) in elements_eos.items():
        volumes = ref[0] * FACTORS
        rows.append({"id": f"dcdft-{el}", "element": el, "n_atoms": 1, "volumes": volumes.tolist(),
                     "energies": (birch_murnaghan_energy(volumes, *model) - 1.0).tolist(),
                     "v0_ref": ref[0], "b0_ref": ref[1], "b1_ref": ref[2], "status": "ok", "reason": None,
                     "seconds": 0.0})
    for el in failed:
        rows.append({"id": f"dcdft-{el}", "element": el, "n_atoms": 1, "v0_ref": 10.0, "b0_ref": 100.0,
                     "b1_ref": 4.0, "status": "failed", "reason": f"{el}: UnsupportedElementError: nope",
                     "seconds": 0.0})
    return rows


def test_metrics_are_recomputed_from_the_energies_and_name_failures():
    evaluator = evaluator_for("eos")
    shifted = (CU[0] * 1.01, *CU[1:])
    rows = bm_rows(evaluator, {"Cu": (CU, shifted), "Al": (AL, AL), "Ag": (CU, (CU[0] * 1.2, *CU[1:]))},
                   failed=["He"])
    rows[2]["element"] = "Ag"  # a curve whose minimum lies beyond its volumes: ok row, failed fit
    metrics = evaluator.metrics(table(evaluator, rows))
    assert set(metrics["elements"]) == {"Cu", "Al"}
    assert metrics["elements"]["Cu"]["V0"] == pytest.approx(shifted[0], rel=1e-6)
    assert metrics["elements"]["Cu"]["delta"] == pytest.approx(delta(*shifted, *CU), rel=1e-5)
    assert metrics["elements"]["Al"]["delta"] < 1e-6
    assert metrics["delta_mean"] == pytest.approx(metrics["elements"]["Cu"]["delta"] / 2, rel=1e-9)
    assert metrics["v0_rel_error_mean"] == pytest.approx(0.005, rel=1e-5)
    assert metrics["n_scored"] == 2 and metrics["coverage"] == 2 / 71
    assert set(metrics["failures"]) == {"Ag", "He"}
    assert "EOSFitError" in metrics["failures"]["Ag"] and "UnsupportedElementError" in metrics["failures"]["He"]
    json.dumps(metrics, allow_nan=False)  # no NaN anywhere


def test_no_scored_element_gives_missing_values_not_nan():
    evaluator = evaluator_for("eos")
    metrics = evaluator.metrics(table(evaluator, bm_rows(evaluator, {}, failed=["He", "Ne"])))
    assert metrics["delta_median"] is None and metrics["delta_mean"] is None and metrics["coverage"] == 0.0
    json.dumps(metrics, allow_nan=False)


def test_bootstrap_of_71_elements_is_fast_and_its_terms_agree():
    """The fast path (means, coverage, per-element values) is checked against metrics() by the
    bootstrap itself; only the median is recomputed per resample."""
    evaluator = evaluator_for("eos")
    crystals = read(DCDFT, index=":")
    rng = np.random.default_rng(0)
    eos = {}
    for a in crystals:
        ref = (a.info["wien2k_volume"], a.info["wien2k_B"], a.info["wien2k_Bp"])
        eos[a.get_chemical_symbols()[0]] = (ref, (ref[0] * (1 + rng.normal(0, 0.01)), ref[1], ref[2]))
    tab = table(evaluator, bm_rows(evaluator, eos))
    metrics = evaluator.metrics(tab)
    assert metrics["n_scored"] == 71 and metrics["coverage"] == 1.0
    t0 = time.perf_counter()
    iv, bootstrap = intervals(evaluator, tab, metrics)
    seconds = time.perf_counter() - t0
    assert seconds < 5.0, f"bootstrap took {seconds:.1f} s"
    lo, hi = iv["delta_median"]
    assert lo <= metrics["delta_median"] <= hi
    assert iv["coverage"] == [1.0, 1.0] and iv["n_scored"] is None
    assert iv["elements"]["Cu"]["V0"] == [metrics["elements"]["Cu"]["V0"]] * 2


def test_task_config_declares_every_top_level_metric():
    config = load_task_config("eos")
    assert config.headline == "delta_median" and config.dataset == "dcdft-wien2k"
    assert config.options["volume_factors"] == pytest.approx(FACTORS.tolist())
    assert config.metrics["coverage"].higher_is_better and not config.metrics["delta_median"].higher_is_better
    assert config.bootstrap.strata is None
    evaluator = evaluator_for(config)
    numbers = {k for k, v in evaluator.metrics(table(evaluator, bm_rows(evaluator, {"Cu": (CU, CU)}))).items()
               if not isinstance(v, dict)}
    assert numbers == set(config.metrics)


def test_records_that_are_not_elemental_crystals_are_refused():
    evaluator = evaluator_for("eos")
    (cu,) = records("Cu")
    alloy = cu.copy()
    alloy[0].symbol = "Au"
    assert "one element per record" in evaluator.accepts(alloy)
    del cu.info["wien2k_B"]
    assert "wien2k_B" in evaluator.accepts(cu)


def test_emt_cu_matches_ase_birch_murnaghan_fit():
    evaluator = evaluator_for("eos")
    (row,) = evaluator.run(load_potential("emt"), records("Cu"))
    assert row["status"] == "ok", row["reason"]
    assert np.allclose(np.array(row["volumes"]) / CU[0], FACTORS, rtol=1e-12)
    volumes, energies = np.array(row["volumes"]), np.array(row["energies"])
    v0, _, b = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
    metrics = evaluator.metrics(table(evaluator, [row]))
    cu = metrics["elements"]["Cu"]
    assert cu["V0"] == pytest.approx(v0, rel=0.01)
    assert cu["B0"] == pytest.approx(b / GPa, rel=0.01)
    assert 0 < cu["delta"] < 50


def test_a_failing_model_call_fails_its_element_alone():
    evaluator = evaluator_for("eos")
    rows = evaluator.run(load_potential("emt"), records("Cu", "Fe"))
    by_element = {r["element"]: r for r in rows}
    assert by_element["Cu"]["status"] == "ok"
    assert by_element["Fe"]["status"] == "failed" and "Fe" in by_element["Fe"]["reason"]
    assert "UnsupportedElementError" in by_element["Fe"]["reason"]


# --- End to end through the CLI -------------------------------------------------------------


def test_cli_eval_emt_gives_every_element_or_a_named_failure_and_reproduces(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "emt", "eos", "--workers", "0", "--out", str(tmp_path),
                                 "--wandb", "disabled", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    metrics = record["metrics"]
    emt = {"Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt", "H", "C", "N", "O"}
    assert set(metrics["elements"]) | set(metrics["failures"]) == {a.get_chemical_symbols()[0]
                                                                   for a in read(DCDFT, index=":")}
    assert set(metrics["elements"]) <= emt and {"Cu", "Al", "Ni"} <= set(metrics["elements"])
    for values in metrics["elements"].values():
        assert set(values) == {"V0", "B0", "B1", "delta"} and all(np.isfinite(list(values.values())))
    for element in emt - set(metrics["elements"]):  # EMT's curves with no minimum in range are named
        assert "EOSFitError" in metrics["failures"][element]
    assert metrics["n_scored"] == len(metrics["elements"]) and metrics["coverage"] == metrics["n_scored"] / 71
    assert record["n_failed"] == 71 - metrics["n_scored"]
    assert record["dataset"]["name"] == "dcdft (WIEN2k all-electron PBE)"
    again = runner.invoke(app, ["reproduce", str(tmp_path / "emt" / "eos.json"), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["ok"]


# --- A real model ---------------------------------------------------------------------------


@pytest.mark.slow
def test_sevennet_0_delta_is_plausible():
    """`mlipzoo eval sevennet-0 eos` on three elements: SevenNet-0 learned PBE (MPtrj), so its Δ
    against WIEN2k PBE is a few meV/atom on simple metals and silicon."""
    evaluator = evaluator_for("eos")
    rows = evaluator.run(load_potential("sevennet-0"), records("Cu", "Si", "Al"))
    assert all(r["status"] == "ok" for r in rows), [r["reason"] for r in rows]
    metrics = evaluator.metrics(table(evaluator, rows))
    deltas = {el: v["delta"] for el, v in metrics["elements"].items()}
    assert all(np.isfinite(d) and d >= 0 for d in deltas.values()), deltas
    assert deltas["Cu"] < 50 and deltas["Al"] < 50 and deltas["Si"] < 50, deltas
    for el, ref in (("Cu", CU), ("Al", AL)):
        assert metrics["elements"][el]["V0"] == pytest.approx(ref[0], rel=0.05)
