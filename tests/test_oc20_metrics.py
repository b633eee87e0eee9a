"""Hand-computed checks of the fairchem-v1 OC20 metric definitions in mlip_zoo.evaluators.oc20.metrics."""

from __future__ import annotations

import numpy as np
import pytest

from mlip_zoo.evaluators.oc20 import metrics as m
from mlip_zoo.evaluators.oc20.metrics import Metric

CELL10 = 10.0 * np.eye(3)
PBC = (True, True, True)


def _s2ef_one(f_true, f_pred, free=None, e_true=0.0, e_pred=0.0, **kw):
    f_true, f_pred = np.asarray(f_true, float), np.asarray(f_pred, float)
    free = np.ones(len(f_true), bool) if free is None else np.asarray(free, bool)
    return m.values(m.s2ef_metrics([e_true], [e_pred], [f_true], [f_pred], [free], **kw))


def _is2rs_one(p_true, p_pred, cell=CELL10, free=None):
    p_true, p_pred = np.asarray(p_true, float), np.asarray(p_pred, float)
    free = np.ones(len(p_true), bool) if free is None else np.asarray(free, bool)
    return m.is2rs_metrics([p_true], [p_pred], [cell], [free])


# --- Metric / merge / values -------------------------------------------------------------------

def test_metric_value_add_and_sum():
    assert Metric(0.0, 0).value is None
    assert Metric(3.0, 2).value == 1.5
    assert Metric(1.0, 1) + Metric(2.0, 3) == Metric(3.0, 4)
    assert sum([Metric(1.0, 1), Metric(2.0, 1)]) == Metric(3.0, 2)
    merged = m.merge([{"a": Metric(1.0, 1)}, {"a": Metric(2.0, 1), "b": Metric(5.0, 5)}])
    assert merged == {"a": Metric(3.0, 2), "b": Metric(5.0, 5)}
    assert m.values(merged) == {"a": 1.5, "b": 1.0}


def test_thresholds():
    assert len(m.ADWT_THRESHOLDS) == 490
    assert m.ADWT_THRESHOLDS[0] == 0.01
    assert m.ADWT_THRESHOLDS[-1] == pytest.approx(0.499)


# --- minimum image -----------------------------------------------------------------------------

def test_min_image_across_boundary():
    # atom at frac 0.99 vs 0.01 in a 10 A cubic cell: 0.2 A apart, not 9.8
    d = m.min_image(np.array([[9.9, 0.0, 0.0]]) - np.array([[0.1, 0.0, 0.0]]), CELL10)
    np.testing.assert_allclose(d, [[-0.2, 0.0, 0.0]], atol=1e-12)
    out = _is2rs_one([[0.1, 0.0, 0.0]], [[9.9, 0.0, 0.0]])
    assert out["average_distance_within_threshold"].value == 300 / 490  # d = 0.2 passes t > 0.2
    # positions_mae/mse use raw differences, as fairchem's evaluator does (only ADwT wraps)
    assert out["positions_mae"].value == pytest.approx(9.8 / 3, abs=1e-12)
    assert out["positions_mse"].value == pytest.approx(9.8 ** 2 / 3, abs=1e-12)


def test_min_image_full_period_and_negative_zero_map_to_zero():
    np.testing.assert_array_equal(m.min_image(np.array([[10.0, -10.0, 20.0]]), CELL10), [[0.0, 0.0, 0.0]])
    # -1e-18 % 1.0 == 1.0 in floating point; the second %= maps it back to 0
    np.testing.assert_array_equal(m.min_image(np.array([[-1e-17, 0.0, 0.0]]), CELL10), [[0.0, 0.0, 0.0]])


def test_min_image_partial_and_non_periodic():
    diff = np.array([[9.8, 9.8, 9.8]])
    np.testing.assert_allclose(m.min_image(diff, CELL10, (True, True, False)), [[-0.2, -0.2, 9.8]], atol=1e-12)
    np.testing.assert_array_equal(m.min_image(diff, CELL10, (False, False, False)), diff)
    np.testing.assert_array_equal(m.min_image(diff, np.zeros((3, 3)), PBC), diff)


def test_min_image_triclinic():
    cell = np.array([[10.0, 0.0, 0.0], [5.0, 8.0, 0.0], [0.0, 0.0, 12.0]])
    diff = 0.98 * cell[1] + np.array([0.0, 0.0, 0.3])   # frac (0, 0.98, 0.025)
    np.testing.assert_allclose(m.min_image(diff[None], cell), [-0.02 * cell[1] + [0, 0, 0.3]], atol=1e-12)


# --- S2EF --------------------------------------------------------------------------------------

def test_force_threshold_is_strict():
    assert _s2ef_one([[0, 0, 0]], [[0.03, 0, 0]])["energy_forces_within_threshold"] == 0.0
    assert _s2ef_one([[0, 0, 0]], [[0.0299, 0, 0]])["energy_forces_within_threshold"] == 1.0
    assert _s2ef_one([[0, 0, 0]], [[0, 0, 0]], e_pred=0.02)["energy_forces_within_threshold"] == 0.0
    assert _s2ef_one([[0, 0, 0]], [[0, 0, 0]], e_pred=0.0199)["energy_forces_within_threshold"] == 1.0


def test_efwt_uses_max_component_not_norm():
    # |dF| = 0.0433 > 0.03 but every component is 0.025 < 0.03
    assert np.linalg.norm([0.025] * 3) > 0.03
    assert _s2ef_one([[0, 0, 0]], [[0.025, 0.025, 0.025]])["energy_forces_within_threshold"] == 1.0


def test_efwt_custom_thresholds():
    assert _s2ef_one([[0, 0, 0]], [[0.05, 0, 0]], force_threshold=0.06)["energy_forces_within_threshold"] == 1.0


def test_a_system_without_free_atoms_is_an_error_not_an_energy_only_score():
    """fairchem's EFwT raises on it (a max over no atoms); we name the system instead of scoring energy alone."""
    with pytest.raises(ValueError, match="system 1 has no free atoms"):
        m.s2ef_metrics([0.0, 0.0], [0.01, 0.01], [np.zeros((1, 3))] * 2, [np.zeros((1, 3))] * 2, [[True], [False]])
    with pytest.raises(ValueError, match="system 0 has no free atoms"):
        _is2rs_one([[1.0, 1.0, 1.0]], [[1.0, 1.0, 1.0]], free=[False])


def test_fixed_atoms_are_excluded():
    base = _s2ef_one([[1.0, 2.0, 3.0]], [[1.01, 2.0, 3.0]])
    with_fixed = _s2ef_one([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], [[1.01, 2.0, 3.0], [100.0, -100.0, 100.0]],
                           free=[True, False])
    assert with_fixed == base
    assert base["energy_forces_within_threshold"] == 1.0
    a = _is2rs_one([[1.0, 1.0, 1.0]], [[1.3, 1.0, 1.0]])
    b = _is2rs_one([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]], [[1.3, 1.0, 1.0], [6.0, 7.0, 2.0]], free=[True, False])
    assert a == b


def test_force_maes_magnitude_and_cosine_example():
    f_true = [[3.0, 4.0, 0.0], [1.0, 0.0, 0.0]]
    f_pred = [[0.0, 0.0, 6.0], [0.0, 3.0, 0.0]]
    out = _s2ef_one(f_true, f_pred)
    assert out["forces_mae"] == pytest.approx((3 + 4 + 6 + 1 + 3 + 0) / 6)
    assert out["forcesx_mae"] == pytest.approx((3 + 1) / 2)
    assert out["forcesy_mae"] == pytest.approx((4 + 3) / 2)
    assert out["forcesz_mae"] == pytest.approx((6 + 0) / 2)
    assert out["forces_magnitude_error"] == pytest.approx((abs(6 - 5) + abs(3 - 1)) / 2)
    assert out["forces_cosine_similarity"] == 0.0                   # both pairs orthogonal


def test_cosine_identical_opposite_and_zero():
    f = np.array([[0.3, -1.2, 2.5], [1e-3, 2e-3, -5e-4]])
    assert _s2ef_one(f, f)["forces_cosine_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert _s2ef_one(f, -f)["forces_cosine_similarity"] == pytest.approx(-1.0, abs=1e-6)
    assert _s2ef_one([[0, 0, 0]], [[0, 0, 0]])["forces_cosine_similarity"] == 0.0   # eps, not NaN
    assert _s2ef_one([[0, 0, 0]], [[1.0, 0, 0]])["forces_cosine_similarity"] == 0.0
    # mean over atoms: one identical (+1) and one opposite (-1) pair
    assert _s2ef_one(f, [f[0], -f[1]])["forces_cosine_similarity"] == pytest.approx(0.0, abs=1e-6)


def test_cosine_of_small_forces_is_torchs():
    """torch.cosine_similarity (fairchem's call) clamps each norm to 1e-8 on its own: two equal forces
    of norm 5e-5 have cosine 1 (max(|a||b|, 1e-8) gave 2.5e-9 / 1e-8 = 0.25)."""
    import torch

    f = np.array([[3e-5, 4e-5, 0.0]])
    assert _s2ef_one(f, f)["forces_cosine_similarity"] == pytest.approx(1.0, abs=1e-6)
    # scaling both forces leaves the cosine unchanged down to |F| ~ 1e-8 (the smallest here: 1.15e-8)
    a, b = np.array([[0.3, -1.2, 2.5]]), np.array([[1.1, 0.4, 2.0]])
    at_one = m.force_cosine(a, b)[0]
    for scale in (1e3, 1e-3, 1e-6, 5e-9):
        assert m.force_cosine(a * scale, b * scale)[0] == pytest.approx(at_one, abs=1e-6), scale
    # below 1e-8 the clamp takes over, as in torch: cos = dot / (1e-8)^2
    tiny = np.array([[1e-9, 0.0, 0.0]])
    expected = torch.nn.functional.cosine_similarity(torch.tensor(tiny, dtype=torch.float32),
                                                     torch.tensor(tiny, dtype=torch.float32)).item()
    assert expected == pytest.approx(0.01, rel=1e-5)
    assert m.force_cosine(tiny, tiny)[0] == pytest.approx(expected, rel=1e-6)


def test_force_cosine_equals_torch_on_random_zero_antiparallel_and_tiny_forces():
    import torch

    rng = np.random.default_rng(7)
    ft = rng.normal(size=(3000, 3)) * 10.0 ** rng.uniform(-10, 1, (3000, 1))  # tiny (below the clamp) to large
    fp = ft + rng.normal(size=ft.shape) * np.abs(ft).max(axis=1, keepdims=True)
    fp[:500] = -rng.uniform(0.1, 3, (500, 1)) * ft[:500]  # antiparallel
    fp[500:600] = 0.0
    ft[600:700] = 0.0
    expected = torch.nn.functional.cosine_similarity(torch.tensor(fp, dtype=torch.float32),
                                                     torch.tensor(ft, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(m.force_cosine(fp, ft), expected, rtol=0, atol=1e-6)


# --- IS2RE -------------------------------------------------------------------------------------

def test_is2re_mae_vs_mse_and_ewt():
    out = m.values(m.is2re_metrics([0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 2.0, 0.0]))
    assert out == {"energy_mae": 1.0, "energy_mse": 1.5, "energy_within_threshold": 0.25}
    assert m.is2re_metrics([0.0], [0.02])["energy_within_threshold"].value == 0.0     # strict
    assert m.is2re_metrics([0.0], [-0.0199])["energy_within_threshold"].value == 1.0
    assert m.is2re_metrics([0.0], [0.05], energy_threshold=0.1)["energy_within_threshold"].value == 1.0


# --- IS2RS -------------------------------------------------------------------------------------

def test_adwt_identical_is_exactly_one():
    p = np.array([[0.1, 0.2, 0.3], [5.0, 6.0, 7.0]])
    assert _is2rs_one(p, p)["average_distance_within_threshold"].value == 1.0
    two = m.is2rs_metrics([p, p], [p, p], [CELL10, CELL10], [np.ones(2, bool)] * 2)
    assert two["average_distance_within_threshold"] == Metric(2.0, 2)
    assert two["positions_mae"] == Metric(0.0, 12)


def test_adwt_just_above_first_threshold():
    # d = 0.0105: fails t = 0.01, passes t = 0.011 ... 0.499 -> 489 of 490 thresholds
    p = np.zeros((1, 3))
    for cell in (np.zeros((3, 3)), CELL10):  # a zero cell (no cell at all): raw differences
        out = _is2rs_one(p, p + [0.0105, 0.0, 0.0], cell=cell)
        assert out["average_distance_within_threshold"].value == 489 / 490


def test_adwt_mean_distance_over_free_atoms_across_boundary():
    # atoms moved by 0.2005 (wrapped, from 9.7995 raw) and 0.0: mean d = 0.10025 -> passes t >= 0.101
    # (k >= 91 of t_k = 0.01 + 0.001 k) -> 399 thresholds
    p_true = np.array([[0.1, 0.0, 0.0], [3.0, 3.0, 3.0]])
    p_pred = np.array([[9.8995, 0.0, 0.0], [3.0, 3.0, 3.0]])
    out = _is2rs_one(p_true, p_pred)
    assert out["average_distance_within_threshold"].value == 399 / 490
    assert out["positions_mae"].value == pytest.approx(9.7995 / 6, abs=1e-12)


def test_adwt_takes_every_axis_as_periodic_like_fairchems_trainer():
    """An OC20 slab is stored with pbc (T, T, F); fairchem's trainer scores ADwT with pbc all True. A
    desorbed adsorbate that ends 19.8995 Å higher in a 20 Å cell, past half its height, is 0.1005 Å from
    its reference image: it passes t >= 0.101 (399 of 490 thresholds), where the data's pbc gave 0."""
    import pyarrow as pa

    from mlip_zoo.evaluators.base import evaluator_for
    from mlip_zoo.evaluators.oc20.tasks import IS2RS

    cell = np.diag([8.0, 8.0, 20.0])
    p_true = np.array([[0.0, 0.0, 2.0], [1.0, 1.0, 9.0]])  # a fixed slab atom, the adsorbate
    p_pred = p_true + [[0.0, 0.0, 0.0], [0.0, 0.0, 19.8995]]
    free = np.array([False, True])
    out = _is2rs_one(p_true, p_pred, cell=cell, free=free)
    assert out["average_distance_within_threshold"].value == 399 / 490
    assert out["positions_mae"].value == pytest.approx(19.8995 / 3, abs=1e-12)  # raw differences
    row = {"id": "desorbed", "split": "id", "n_atoms": 2, "status": "ok", "reason": None, "seconds": 0.0,
           "energy_true": 0.0, "energy_pred": 0.0, "pos_true": p_true.ravel().tolist(),
           "pos_pred": p_pred.ravel().tolist(), "cell": cell.ravel().tolist(), "pbc": [True, True, False],
           "free": free.tolist(), "converged": True, "steps": 3}
    metrics = evaluator_for("oc20-is2rs").metrics(pa.Table.from_pylist([row], schema=IS2RS.schema))
    assert metrics["average_distance_within_threshold"] == 399 / 490


def _fully_fixed_slab():
    from ase.build import add_adsorbate, fcc111
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixAtoms

    slab = fcc111("Cu", (2, 2, 2), vacuum=5.0)
    add_adsorbate(slab, "O", 1.7, "fcc")
    slab.info.pop("adsorbate_info", None)
    ref = slab.copy()
    ref.calc = EMT()
    slab.calc = SinglePointCalculator(slab, energy=ref.get_potential_energy(), forces=ref.get_forces())
    slab.set_constraint(FixAtoms(indices=range(len(slab))))  # every atom, the adsorbate too
    slab.info.update({"sid": "fixed", "split": "id", "y_relaxed": ref.get_potential_energy()})
    slab.new_array("pos_relaxed", slab.get_positions())
    return slab


@pytest.mark.parametrize("task", ["oc20-s2ef", "oc20-is2rs", "oc20-is2re"])
def test_a_structure_with_every_atom_fixed_is_a_failed_row_with_its_reason(task):
    """EFwT and ADwT are undefined without a free atom: the structure is listed as failed, with the
    reason, in every OC20 task (IS2RE shares IS2RS's rows); the other structures score as usual."""
    from mlip_zoo.evaluators.base import evaluator_for
    from mlip_zoo.evaluators.oc20.tasks import NO_FREE_ATOMS
    from mlip_zoo.zoo import load_potential

    fixed = _fully_fixed_slab()
    movable = fixed.copy()
    movable.calc = fixed.calc
    movable.set_constraint()
    movable.info["sid"] = "movable"
    evaluator = evaluator_for(task)
    assert evaluator.accepts(fixed) is None  # a valid record: it fails as a structure, not the dataset
    rows = evaluator.run(load_potential("emt"), [fixed, movable])
    assert rows[0]["status"] == "failed" and rows[0]["reason"] == NO_FREE_ATOMS
    assert "no free atoms" in NO_FREE_ATOMS and "undefined" in NO_FREE_ATOMS
    assert rows[1]["status"] == "ok"


def test_adwt_curve():
    t, frac = m.adwt_curve([0.0, 0.0105])
    assert len(t) == 490 and frac[0] == 0.5 and frac[1] == 1.0 and frac[-1] == 1.0
    t, frac = m.adwt_curve([0.6])
    assert np.all(frac == 0.0)


# --- empty input, validation, merging ----------------------------------------------------------

def test_empty_split_gives_none():
    s2ef = m.s2ef_metrics([], [], [], [], [])
    assert set(s2ef) == set(m.S2EF_KEYS) and all(v is None for v in m.values(s2ef).values())
    is2re = m.is2re_metrics([], [])
    assert set(is2re) == set(m.IS2RE_KEYS) and all(v is None for v in m.values(is2re).values())
    is2rs = m.is2rs_metrics([], [], [], [])
    assert set(is2rs) == set(m.IS2RS_KEYS) and all(v is None for v in m.values(is2rs).values())


def test_shape_mismatch_names_system():
    ok = np.zeros((2, 3))
    with pytest.raises(ValueError, match="system 1"):
        m.s2ef_metrics([0, 0], [0, 0], [ok, ok], [ok, np.zeros((3, 3))], [np.ones(2, bool)] * 2)
    with pytest.raises(ValueError, match="system 0"):
        m.s2ef_metrics([0], [0], [ok], [ok], [np.ones(3, bool)])
    with pytest.raises(ValueError, match="system 1"):
        m.is2rs_metrics([ok, ok], [ok, ok[:1]], [CELL10] * 2, [np.ones(2, bool)] * 2)
    with pytest.raises(ValueError):
        m.is2re_metrics([0.0, 1.0], [0.0])


def test_merging_halves_equals_whole():
    rng = np.random.default_rng(0)
    n_atoms = [3, 5, 1, 4, 6, 2]
    e_true = rng.normal(size=6)
    e_pred = e_true + rng.normal(scale=0.02, size=6)
    f_true = [rng.normal(size=(n, 3)) for n in n_atoms]
    f_pred = [f + rng.normal(scale=0.02, size=f.shape) for f in f_true]
    free = [(np.arange(n) == 0) | (rng.random(n) < 0.7) for n in n_atoms]  # one free atom at least
    cells = [CELL10 + rng.normal(scale=0.5, size=(3, 3)) for _ in n_atoms]
    p_true = [rng.random((n, 3)) * 10 for n in n_atoms]
    p_pred = [p + rng.normal(scale=0.1, size=p.shape) for p in p_true]

    def parts(fn, *lists):
        whole = fn(*lists)
        halves = m.merge([fn(*[x[:2] for x in lists]), fn(*[x[2:] for x in lists])])
        return whole, halves

    for whole, halves in (parts(m.s2ef_metrics, e_true, e_pred, f_true, f_pred, free),
                          parts(m.is2re_metrics, e_true, e_pred),
                          parts(m.is2rs_metrics, p_true, p_pred, cells, free)):
        assert set(whole) == set(halves)
        for key in whole:
            assert whole[key].numel == halves[key].numel, key
            assert whole[key].total == pytest.approx(halves[key].total, rel=1e-12, abs=1e-12), key


# --- the task's column-wise path on a predictions table ----------------------------------------

def _loop_s2ef(rows, e_thr, f_thr):
    """fairchem's definitions written out system by system, as an independent reference."""
    de, absdf, comp, cos, mag, n_free, within = [], [], np.zeros(3), [], [], 0, 0
    for r in rows:
        free = np.asarray(r["free"], bool)
        ft = np.reshape(r["forces_true"], (-1, 3))[free]
        fp = np.reshape(r["forces_pred"], (-1, 3))[free]
        d = np.abs(fp - ft)
        de.append(abs(r["energy_pred"] - r["energy_true"]))
        absdf.append(d.sum())
        comp += d.sum(axis=0)
        for a, b in zip(fp.astype(np.float32), ft.astype(np.float32), strict=True):
            eps = np.float32(1e-8)
            cos.append(float(np.dot(a, b) / (max(np.linalg.norm(a), eps) * max(np.linalg.norm(b), eps))))
        mag.extend(np.abs(np.linalg.norm(fp, axis=1) - np.linalg.norm(ft, axis=1)))
        n_free += int(free.sum())
        within += int(de[-1] < e_thr and d.max() < f_thr)
    return {"energy_mae": np.mean(de), "forces_mae": sum(absdf) / (3 * n_free),
            "forcesx_mae": comp[0] / n_free, "forcesy_mae": comp[1] / n_free, "forcesz_mae": comp[2] / n_free,
            "forces_cosine_similarity": sum(cos) / n_free, "forces_magnitude_error": sum(mag) / n_free,
            "energy_forces_within_threshold": within / len(rows)}


def _s2ef_table(rng, n_rows=40):
    import pyarrow as pa

    from mlip_zoo.evaluators.oc20.tasks import S2EF

    rows = []
    for i in range(n_rows):
        n = int(rng.integers(1, 7))
        ft = rng.normal(size=(n, 3))
        row = {"id": f"s{i}", "split": ["val_id", "val_ood_ads"][i % 2], "n_atoms": n, "status": "ok",
               "reason": None, "seconds": 0.0, "energy_true": float(rng.normal()),
               "forces_true": ft.ravel().tolist(),
               "forces_pred": (ft + rng.normal(scale=0.02, size=ft.shape)).ravel().tolist(),
               "free": ((np.arange(n) == 0) | (rng.random(n) < 0.7)).tolist()}  # one free atom at least
        row["energy_pred"] = row["energy_true"] + float(rng.normal(scale=0.02))
        if i % 7 == 3:  # a failed structure contributes nothing
            row = {**{k: row[k] for k in ("id", "split", "n_atoms", "seconds")}, "status": "failed",
                   "reason": "RuntimeError: boom"}
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=S2EF.schema), rows


def test_table_metrics_equal_the_system_by_system_definitions():
    from mlip_zoo.evaluators.base import evaluator_for

    task = evaluator_for("oc20-s2ef")
    e_thr, f_thr = task.config.options["energy_threshold"], task.config.options["force_threshold"]
    table, rows = _s2ef_table(np.random.default_rng(3))
    ok = [r for r in rows if r["status"] == "ok"]
    out = task.metrics(table)

    def rel(key):  # the cosine is defined in float32: its rounding depends on the order of operations
        return 1e-6 if key == "forces_cosine_similarity" else 1e-12

    for key, value in _loop_s2ef(ok, e_thr, f_thr).items():
        assert out[key] == pytest.approx(value, rel=rel(key)), key
    for split in ("val_id", "val_ood_ads"):
        part = [r for r in ok if r["split"] == split]
        assert out["splits"][split]["n"] == len(part)
        for key, value in _loop_s2ef(part, e_thr, f_thr).items():
            assert out["splits"][split][key] == pytest.approx(value, rel=rel(key)), (split, key)
    for split in set(task.config.splits) - {"all", "val_id", "val_ood_ads"}:  # named by the task, absent here
        assert out["splits"][split]["n"] == 0 and out["splits"][split]["energy_mae"] is None
    # chunked tables (shards concatenated) give the same numbers
    import pyarrow as pa

    chunked = pa.concat_tables([table.slice(0, 13), table.slice(13)])
    assert task.metrics(chunked) == out


def test_a_corrupt_predictions_row_is_named():
    import pyarrow as pa

    from mlip_zoo.evaluators.base import evaluator_for

    table, rows = _s2ef_table(np.random.default_rng(4), 5)
    rows[2]["forces_pred"] = rows[2]["forces_pred"][:-1]
    with pytest.raises(ValueError, match="'s2'.*forces_pred.*corrupt"):
        evaluator_for("oc20-s2ef").metrics(pa.Table.from_pylist(rows, schema=table.schema))
