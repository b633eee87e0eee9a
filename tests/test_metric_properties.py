"""Every OC20 and Matbench Discovery metric against a plain, loop-by-loop implementation of its reference
definition written here (no helper from the package), on random inputs that include near-threshold
errors, zero and antiparallel forces, tiny forces, atoms that cross the cell, NaN predictions and
subsets with one class only.

References: fairchem's v1 evaluator (torch.cosine_similarity for the force cosine; ADwT with pbc all
True, as its trainer passes), matbench-discovery commit 2c7f9fc metrics/discovery.py and geo_opt.py.
The comparisons with torch itself and with matbench-discovery 1.3.1 are in test_oc20_metrics.py and
test_discovery.py (importing them takes longer than all of these).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlip_zoo.evaluators.discovery import metrics as dm
from mlip_zoo.evaluators.oc20 import metrics as om

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True)
SEEDS = st.integers(0, 2**32 - 1)
THRESHOLDS = [0.01 + 0.001 * k for k in range(490)]  # np.arange(0.01, 0.5, 0.001), near enough for d +- 1e-9


# ---- OC20: S2EF ---------------------------------------------------------------------------------

def _force_pair(rng) -> tuple[list[float], list[float]]:
    """A (true, predicted) force pair of a random kind."""
    ft = rng.normal(size=3) * 10.0 ** rng.uniform(-3, 1)
    kind = rng.integers(8)
    if kind == 0:
        return [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    if kind == 1:
        return ft.tolist(), [0.0, 0.0, 0.0]
    if kind == 2:  # antiparallel
        return ft.tolist(), (-rng.uniform(0.1, 3) * ft).tolist()
    if kind == 3:  # tiny forces, down to the clamp (1e-8) and below
        scale = 10.0 ** rng.uniform(-10, -4)
        return (ft * scale).tolist(), ((ft + rng.normal(scale=0.1, size=3)) * scale).tolist()
    if kind == 4:  # one component off by the force threshold, or just either side of it
        fp = ft.copy()
        fp[rng.integers(3)] += rng.choice([-1, 1]) * rng.choice([0.03, np.nextafter(0.03, 0), 0.0299999, 0.0300001])
        return ft.tolist(), fp.tolist()
    return ft.tolist(), (ft + rng.normal(scale=10.0 ** rng.uniform(-3, -1), size=3)).tolist()


def _loop_s2ef(e_true, e_pred, f_true, f_pred, free, e_thr=0.02, f_thr=0.03):
    sums = {"energy_mae": 0.0, "forces_mae": 0.0, "forcesx_mae": 0.0, "forcesy_mae": 0.0, "forcesz_mae": 0.0,
            "forces_cosine_similarity": 0.0, "forces_magnitude_error": 0.0, "energy_forces_within_threshold": 0.0}
    n_free = 0
    eps = np.float32(1e-8)
    for s in range(len(e_true)):
        de = abs(e_pred[s] - e_true[s])
        sums["energy_mae"] += de
        worst = 0.0
        for i in range(len(free[s])):
            if not free[s][i]:
                continue
            n_free += 1
            a, b = f_pred[s][i], f_true[s][i]
            for c, key in enumerate(("forcesx_mae", "forcesy_mae", "forcesz_mae")):
                err = abs(a[c] - b[c])
                sums[key] += err
                sums["forces_mae"] += err
                worst = max(worst, err)
            sums["forces_magnitude_error"] += abs(math.sqrt(sum(x * x for x in a)) - math.sqrt(sum(x * x for x in b)))
            a32, b32 = [np.float32(x) for x in a], [np.float32(x) for x in b]
            dot = sum(x * y for x, y in zip(a32, b32))
            na = max(np.float32(math.sqrt(sum(float(x) ** 2 for x in a32))), eps)
            nb = max(np.float32(math.sqrt(sum(float(x) ** 2 for x in b32))), eps)
            sums["forces_cosine_similarity"] += float(dot) / (float(na) * float(nb))
        sums["energy_forces_within_threshold"] += float(de < e_thr and worst < f_thr)
    n = len(e_true)
    return {k: v / (n if k in ("energy_mae", "energy_forces_within_threshold") else
                    3 * n_free if k == "forces_mae" else n_free) for k, v in sums.items()}


@SETTINGS
@given(SEEDS)
def test_s2ef_equals_a_loop_over_atoms(seed):
    rng = np.random.default_rng(seed)
    n_sys = int(rng.integers(1, 5))
    e_true = rng.normal(size=n_sys).tolist()
    # energy errors at, just inside and just outside the 0.02 eV threshold, or anywhere
    e_pred = [e + rng.choice([0.02, -0.02, np.nextafter(0.02, 0), 0.0200001, rng.normal(scale=0.03)])
              for e in e_true]
    f_true, f_pred, free = [], [], []
    for _ in range(n_sys):
        pairs = [_force_pair(rng) for _ in range(int(rng.integers(1, 6)))]
        f_true.append([t for t, _ in pairs])
        f_pred.append([p for _, p in pairs])
        mask = (rng.random(len(pairs)) < 0.7).tolist()
        mask[int(rng.integers(len(pairs)))] = True  # a system without free atoms is a failed structure
        free.append(mask)
    ours = om.values(om.s2ef_metrics(e_true, e_pred, [np.array(f) for f in f_true], [np.array(f) for f in f_pred],
                                     [np.array(f) for f in free]))
    expected = _loop_s2ef(e_true, e_pred, f_true, f_pred, free)
    for key, value in expected.items():
        if key == "energy_forces_within_threshold":  # the same comparisons of the same differences
            assert ours[key] == value
        elif key == "forces_cosine_similarity":  # float32, summed in another order
            assert ours[key] == pytest.approx(value, abs=2e-6), key
        else:
            assert ours[key] == pytest.approx(value, rel=1e-12, abs=1e-300), key


# ---- OC20: IS2RE --------------------------------------------------------------------------------

@SETTINGS
@given(SEEDS)
def test_is2re_equals_a_loop(seed):
    rng = np.random.default_rng(seed)
    e_true = rng.normal(size=int(rng.integers(1, 20))).tolist()
    e_pred = [e + rng.choice([0.02, -0.02, np.nextafter(0.02, 0), 0.0200001, rng.normal(scale=0.05)])
              for e in e_true]
    ours = om.values(om.is2re_metrics(e_true, e_pred))
    errors = [abs(p - t) for p, t in zip(e_pred, e_true)]
    assert ours["energy_mae"] == pytest.approx(sum(errors) / len(errors), rel=1e-12)
    assert ours["energy_mse"] == pytest.approx(sum(e * e for e in errors) / len(errors), rel=1e-12)
    assert ours["energy_within_threshold"] == sum(e < 0.02 for e in errors) / len(errors)


# ---- OC20: IS2RS --------------------------------------------------------------------------------

def _loop_min_image(diff, cell):
    """fairchem's min_diff for one vector, every axis periodic."""
    frac = np.linalg.solve(np.array(cell).T, np.array(diff))
    out = [0.0, 0.0, 0.0]
    for axis in range(3):
        f = frac[axis] % 1.0
        f %= 1.0
        if f > 0.5:
            f -= 1.0
        for c in range(3):
            out[c] += f * cell[axis][c]
    return out


def _adwt_bounds(d: float) -> tuple[int, int]:
    """Thresholds passed by d, allowing d a relative rounding of 1e-12 (summation order)."""
    return (sum(d * (1 + 1e-12) < t for t in THRESHOLDS), sum(d * (1 - 1e-12) < t for t in THRESHOLDS))


@SETTINGS
@given(SEEDS)
def test_is2rs_equals_a_loop_with_the_minimum_image(seed):
    rng = np.random.default_rng(seed)
    n_sys = int(rng.integers(1, 5))
    pos_true, pos_pred, cells, free = [], [], [], []
    for _ in range(n_sys):
        cell = np.diag(rng.uniform(5, 20, 3)) + np.triu(rng.normal(scale=1.0, size=(3, 3)), 1)
        n = int(rng.integers(1, 6))
        p = rng.random((n, 3)) @ cell
        step = rng.normal(size=(n, 3))
        step /= np.linalg.norm(step, axis=1, keepdims=True)
        # moves whose length is a threshold (+- 1e-9) or anything up to 0.6 Å, some past a cell boundary
        length = np.where(rng.random(n) < 0.5, rng.choice(THRESHOLDS, n) + rng.choice([-1e-9, 0, 1e-9], n),
                          rng.uniform(0, 0.6, n))
        q = p + step * length[:, None] + rng.integers(-1, 2, (n, 3)) @ cell
        mask = rng.random(n) < 0.7
        mask[rng.integers(n)] = True
        pos_true.append(p), pos_pred.append(q), cells.append(cell), free.append(mask)
    ours = om.is2rs_metrics(pos_true, pos_pred, cells, free)
    lo = hi = 0
    abs_sum = sq_sum = 0.0
    n_comp = 0
    for p, q, cell, mask in zip(pos_true, pos_pred, cells, free):
        dists = []
        for i in range(len(p)):
            if mask[i]:
                raw = [q[i][c] - p[i][c] for c in range(3)]
                dists.append(math.sqrt(sum(x * x for x in _loop_min_image(raw, cell.tolist()))))
                abs_sum += sum(abs(x) for x in raw)
                sq_sum += sum(x * x for x in raw)
                n_comp += 3
        low, high = _adwt_bounds(sum(dists) / len(dists))
        lo, hi = lo + low, hi + high
    adwt = ours["average_distance_within_threshold"]
    assert adwt.numel == n_sys and lo / 490 - 1e-12 <= adwt.total <= hi / 490 + 1e-12
    assert ours["positions_mae"].numel == n_comp and ours["positions_mae"].value == pytest.approx(abs_sum / n_comp,
                                                                                                  rel=1e-12)
    assert ours["positions_mse"].value == pytest.approx(sq_sum / n_comp, rel=1e-12)


# ---- Matbench Discovery -------------------------------------------------------------------------

def _loop_stable_metrics(each_true, each_pred, prevalence=None):
    """matbench-discovery 2c7f9fc stable_metrics, one row at a time."""
    nan = float("nan")
    tp = fn = fp = tn = 0
    ok_true, ok_pred = [], []
    for t, p in zip(each_true, each_pred):
        called = not math.isnan(p) and p <= 0  # a NaN prediction is "unstable"
        if t <= 0:
            tp, fn = tp + called, fn + (not called)
        elif t > 0:
            fp, tn = fp + called, tn + (not called)
        if not (math.isnan(t) or math.isnan(p)):
            ok_true.append(t), ok_pred.append(p)

    def ratio(a, b):
        return a / b if b > 0 else nan

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    if prevalence is None:
        prevalence = ratio(tp + fn, tp + fn + fp + tn)
    n = len(ok_true)
    r2 = nan
    if n > 1:
        mean = sum(ok_true) / n
        residual = sum((t - p) ** 2 for t, p in zip(ok_true, ok_pred))
        spread = sum((t - mean) ** 2 for t in ok_true)
        r2 = 1.0 if residual == 0 else 0.0 if spread == 0 else 1 - residual / spread
    return {"F1": 2 * precision * recall / (precision + recall) if precision + recall > 0 else nan,
            "DAF": ratio(precision, prevalence), "Precision": precision, "Recall": recall,
            "Accuracy": ratio(tp + tn, tp + fn + fp + tn), "TPR": recall, "FPR": ratio(fp, fp + tn),
            "TNR": ratio(tn, fp + tn), "FNR": ratio(fn, tp + fn), "TP": tp, "FP": fp, "TN": tn, "FN": fn,
            "MAE": sum(abs(t - p) for t, p in zip(ok_true, ok_pred)) / n if n else nan,
            "RMSE": math.sqrt(sum((t - p) ** 2 for t, p in zip(ok_true, ok_pred)) / n) if n else nan, "R2": r2}


def _hull_distances(rng, n):
    """Hull distances at, just around and away from 0; on a coarse binary grid half the time, so
    that constant truths and exact fits (R2's special cases) occur and sums are exact."""
    if rng.random() < 0.5:
        return rng.integers(-8, 9, n) / 64.0
    values = rng.normal(0.0, 0.1, n)
    near = rng.random(n) < 0.3
    values[near] = rng.choice([0.0, -0.0, 1e-12, -1e-12, 5e-324], near.sum())
    return values


@SETTINGS
@given(SEEDS)
def test_discovery_metrics_equal_a_loop_on_every_subset(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 14))
    each_true = _hull_distances(rng, n)
    e_form_dft = rng.integers(-16, 1, n) / 16.0
    each_err = np.where(rng.random(n) < 0.5, _hull_distances(rng, n), 0.0)
    e_form_pred = e_form_dft + each_err
    e_form_pred[rng.random(n) < 0.2] = np.nan  # failed relaxations
    if rng.random() < 0.2:  # all stable or all unstable
        each_true = np.abs(each_true) * rng.choice([-1, 1]) + rng.choice([-1, 1]) * 1e-3
    unique = rng.random(n) < 0.7
    most_stable_n = int(rng.integers(0, 6))
    ours = dm.discovery_metrics(each_true, e_form_pred, e_form_dft, unique, most_stable_n)

    each_pred = [t + p - d for t, p, d in zip(each_true.tolist(), e_form_pred.tolist(), e_form_dft.tolist())]
    uniq = [i for i in range(n) if unique[i]]
    # stable sort by predicted hull distance, NaN last (pandas sort_values(na_position="last", kind="stable"))
    ranked = sorted(uniq, key=lambda i: (math.isnan(each_pred[i]), 0.0 if math.isnan(each_pred[i]) else each_pred[i]))
    uniq_prevalence = sum(each_true[i] <= 0 for i in uniq) / len(uniq) if uniq else float("nan")
    for name, rows, prevalence in (("full_test_set", list(range(n)), None), ("unique_prototypes", uniq, uniq_prevalence),
                                   ("most_stable", sorted(ranked[:most_stable_n]), uniq_prevalence)):
        expected = _loop_stable_metrics([each_true[i] for i in rows], [each_pred[i] for i in rows], prevalence)
        assert ours[name]["n"] == len(rows)
        for key, value in expected.items():
            got = ours[name][key]
            if isinstance(value, int):
                assert got == value, (name, key)
            elif math.isnan(value):
                assert got is None, (name, key, got)
            else:
                assert got == pytest.approx(value, rel=1e-12, abs=1e-300), (name, key)


# ---- geometry optimisation ----------------------------------------------------------------------

@SETTINGS
@given(SEEDS)
def test_geo_opt_equals_a_loop(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 10))
    failed = rng.random(n) < 0.3
    rmsd = np.where(rng.random(n) < 0.2, np.nan, rng.uniform(0, 0.5, n))
    rmsd[failed] = np.nan
    spg_ref = rng.choice([12, 194, 221, 225], n).astype(float)
    spg_pred = np.where(rng.random(n) < 0.6, spg_ref, rng.choice([12, 194, 221, 225], n)).astype(float)
    ops_ref = rng.choice([4, 24, 48], n).astype(float)
    ops_pred = np.where(spg_pred == spg_ref, ops_ref, rng.choice([4, 24, 48], n)).astype(float)
    for arr in (spg_pred, ops_pred):
        arr[failed] = np.nan
    out = dm.geo_opt_metrics(rmsd, failed, {"1e-2": spg_pred}, {"1e-2": spg_ref}, {"1e-2": ops_pred},
                             {"1e-2": ops_ref})

    relaxed = [1.0 if math.isnan(r) else r for r, f in zip(rmsd, failed) if not f]
    penalised = [1.0 if f or math.isnan(r) else r for r, f in zip(rmsd, failed)]
    assert out["rmsd"] == (pytest.approx(sum(relaxed) / len(relaxed), rel=1e-12) if relaxed else None)
    assert out["rmsd_failed_as_1A"] == (pytest.approx(sum(penalised) / n, rel=1e-12) if n else None)
    valid = [i for i in range(n) if not math.isnan(spg_pred[i])]
    sym = out["symprec=1e-2"]
    assert sym["n"] == len(valid)
    if valid:
        match = sum(spg_pred[i] == spg_ref[i] for i in valid) / len(valid)
        lower = sum(spg_pred[i] != spg_ref[i] and ops_pred[i] < ops_ref[i] for i in valid) / len(valid)
        higher = sum(spg_pred[i] != spg_ref[i] and ops_pred[i] > ops_ref[i] for i in valid) / len(valid)
        mae = sum(abs(ops_pred[i] - ops_ref[i]) for i in valid) / len(valid)
        assert (sym["symmetry_match"], sym["symmetry_decrease"], sym["symmetry_increase"]) == pytest.approx(
            (match, lower, higher), rel=1e-12)
        assert sym["n_sym_ops_mae"] == pytest.approx(mae, rel=1e-12)
    else:
        assert sym["symmetry_match"] is None and sym["n_sym_ops_mae"] is None
