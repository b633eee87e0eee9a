"""Uncertainty of every number: bootstrap intervals in result files (reproducible), paired
differences (`mlipzoo compare`), rank distributions; on oc20-mini (EMT labels) with EMT and
noisy EMT models whose error statistics are known."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from mlip_zoo.cli import app
from mlip_zoo.errors import DatasetError, MetricError
from mlip_zoo.evaluators import uncertainty as u
from mlip_zoo.evaluators.base import (BootstrapSettings, Evaluator, MetricSpec, TaskConfig, evaluator_for,
                                      load_task_config)
from mlip_zoo.evaluators.runner import RunOptions, evaluate
from mlip_zoo.leaderboard.results import recompute

TESTS = Path(__file__).parent
runner = CliRunner()


def noisy_card(key: str, **kwargs) -> str:
    args = ", ".join(f"{k}: {v}" for k, v in kwargs.items())
    return f"""\
        key: {key}
        name: Noisy EMT {key}
        version: "1"
        family: ase
        calculator: "fake_calcs:NoisyEMT"
        calculator_kwargs: {{{args}}}
        license: MIT
        targets: EFS
        """


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """EMT and three noisy EMTs on S2EF. ``small``/``large``: the same noisy model on 60 and on
    240 structures; ``low``/``high``: energy errors N(0.1, 0.02) and N(0.3, 0.02) eV, so their
    energy MAE differs by 0.2 eV in expectation."""
    root = tmp_path_factory.mktemp("uncertainty")
    cards = root / "cards"
    cards.mkdir()
    (cards / "noisy.yaml").write_text(noisy_card("noisy", energy_noise=0.1, force_noise=0.05, seed=1))
    (cards / "low.yaml").write_text(noisy_card("low", energy_bias=0.1, energy_noise=0.02, seed=2))
    (cards / "high.yaml").write_text(noisy_card("high", energy_bias=0.3, energy_noise=0.02, seed=3))
    for card in cards.iterdir():
        card.write_text("\n".join(line.strip() for line in card.read_text().splitlines()) + "\n")
    out: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLIPZOO_CACHE", str(root / "cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("MLIPZOO_CARDS", str(cards))
        mp.syspath_prepend(str(TESTS))
        out["small"] = evaluate("noisy", "oc20-s2ef", RunOptions(out=root / "small", workers=0, limit=60))
        out["large"] = evaluate("noisy", "oc20-s2ef", RunOptions(out=root / "large", workers=0, limit=240))
        for key in ("emt", "low", "high"):
            out[key] = evaluate(key, "oc20-s2ef", RunOptions(out=root / "results", workers=0, limit=60))
    out["root"] = root
    return out


def width(interval) -> float:
    return interval[1] - interval[0]


def test_intervals_shrink_as_one_over_sqrt_n(runs):
    small, large = runs["small"], runs["large"]
    ratios = []
    for key in ("energy_mae", "forces_mae", "forces_cosine_similarity"):
        point_s, ci_s = small.metrics[key], small.intervals[key]
        point_l, ci_l = large.metrics[key], large.intervals[key]
        assert ci_s[0] < point_s < ci_s[1] and ci_l[0] < point_l < ci_l[1]
        ratios.append(width(ci_s) / width(ci_l))  # 4x the structures: sqrt(4) = 2
    # each ratio carries the sampling noise of 60 structures (~10 %); their mean is close to 2
    assert all(1.4 < r < 2.8 for r in ratios), ratios
    assert 1.75 < sum(ratios) / len(ratios) < 2.3, ratios
    # energy errors are N(0, 0.1): MAE = 0.1 sqrt(2/pi); its interval on 240 structures covers that
    ci = large.intervals["energy_mae"]
    assert ci[0] < 0.1 * math.sqrt(2 / math.pi) < ci[1]
    # per split, and counts carry no interval
    for split, values in large.intervals["splits"].items():
        assert values["n"] is None
        if large.metrics["splits"][split]["n"] > 5:
            assert values["energy_mae"][0] < large.metrics["splits"][split]["energy_mae"] < values["energy_mae"][1]
    boot = large.provenance.bootstrap
    assert (boot["resamples"], boot["seed"], boot["confidence"], boot["strata"]) == (1000, 0, 0.95, "split")


def test_many_shards_streamed_give_the_whole_table_numbers(runs, tmp_path, monkeypatch):
    """OC20 results are summarised shard by shard from per-row terms; recomputing metrics and
    intervals from the joined predictions table gives the same numbers."""
    monkeypatch.setenv("MLIPZOO_CARDS", str(runs["root"] / "cards"))
    monkeypatch.syspath_prepend(str(TESTS))
    config = evaluator_for("oc20-s2ef").config.model_copy(update={"shard_atoms": 100})
    record = evaluate("noisy", config, RunOptions(out=tmp_path, workers=0, limit=60))
    assert len(list(tmp_path.rglob("shard-*.parquet"))) >= 6
    assert record.metrics == runs["small"].metrics  # the same structures in one shard
    comparison = recompute(tmp_path / "noisy" / "oc20-s2ef.json")
    assert comparison.ok, comparison.differences


def test_result_intervals_reproduce_and_edits_are_caught(runs):
    path = runs["root"] / "small" / "noisy" / "oc20-s2ef.json"
    assert recompute(path).ok
    record = json.loads(path.read_text())
    record["intervals"]["energy_mae"][1] *= 0.5  # a narrower interval than the predictions support
    record["provenance"]["bootstrap"]["seed"] = 7
    path.write_text(json.dumps(record))
    keys = {d[0] for d in recompute(path).differences}
    assert keys == {"intervals.energy_mae", "provenance.bootstrap.seed"}
    result = runner.invoke(app, ["validate", str(path), "--cards", str(runs["root"] / "cards")])
    assert result.exit_code == 1 and "intervals.energy_mae: claimed" in result.stderr


def test_a_model_compared_with_itself_differs_by_exactly_zero(runs):
    path = runs["root"] / "results" / "low" / "oc20-s2ef.json"
    result = runner.invoke(app, ["compare", str(path), str(path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["n_common"] == 60 and data["metrics"]
    for key, d in data["metrics"].items():
        assert d["difference"] == 0.0 and d["interval"] == [0.0, 0.0], key
        assert not d["significant"]


def test_a_known_offset_lies_inside_the_paired_interval(runs):
    low, high = (runs["root"] / "results" / k / "oc20-s2ef.json" for k in ("low", "high"))
    result = runner.invoke(app, ["compare", str(high), str(low), "--json"])
    assert result.exit_code == 0, result.output
    energy = json.loads(result.stdout)["metrics"]["energy_mae"]
    lo, hi = energy["interval"]
    assert lo < 0.2 < hi and energy["significant"]
    expected = runs["high"].metrics["energy_mae"] - runs["low"].metrics["energy_mae"]
    assert energy["difference"] == pytest.approx(expected)
    assert width(energy["interval"]) < 0.05  # paired: the shared structures cancel, only the noise is left
    forces = json.loads(result.stdout)["metrics"]["forces_mae"]
    assert forces["difference"] == 0.0 and forces["interval"] == [0.0, 0.0]  # same EMT forces
    table = runner.invoke(app, ["compare", str(high), str(low)])
    assert table.exit_code == 0 and "energy_mae" in table.stdout and "yes" in table.stdout


def test_compare_refuses_different_tasks(runs, tmp_path):
    path = runs["root"] / "results" / "emt" / "oc20-s2ef.json"
    other = evaluate("emt", "oc20-is2re", RunOptions(out=tmp_path, workers=0, limit=2))
    lo, hi = other.intervals["energy_mae"]
    assert lo <= other.metrics["energy_mae"] <= hi
    result = runner.invoke(app, ["compare", str(path), str(tmp_path / "emt" / "oc20-is2re.json")])
    assert result.exit_code == 1 and "compare two results of the same task" in result.stderr


def test_ranks_are_ranges_and_indistinct_pairs_are_marked(runs):
    import pyarrow.parquet as pq

    evaluator = evaluator_for("oc20-s2ef")
    tables = {k: pq.read_table(runs["root"] / "results" / k / "oc20-s2ef.parquet") for k in ("emt", "low", "high")}
    tables["twin"] = tables["emt"]  # identical predictions: a tie, never significant
    ranking = u.rank(evaluator, tables, "energy_mae", higher_is_better=False)
    assert ranking.n == 60
    assert ranking.rank == {"emt": 1, "twin": 1, "low": 3, "high": 4}
    assert ranking.rank_range == {"emt": (1, 1), "twin": (1, 1), "low": (3, 3), "high": (4, 4)}
    assert ranking.indistinct("emt") == ["twin"] and ranking.indistinct("low") == []
    # forces: low and high have EMT's forces exactly, so all four tie on force MAE
    ranking = u.rank(evaluator, tables, "forces_mae", higher_is_better=False)
    assert set(ranking.rank.values()) == {1} and set(ranking.rank_range.values()) == {(1, 1)}
    assert sorted(ranking.indistinct("high")) == ["emt", "low", "twin"]


def _noisy_copy(table: pa.Table, rng: np.random.Generator, columns: dict[str, float]) -> pa.Table:
    """The table with Gaussian noise of the given size added to list or scalar float columns."""
    for name, sigma in columns.items():
        values = table.column(name).to_pylist()
        noisy = [(np.asarray(v) + sigma * rng.standard_normal(np.shape(v))).tolist() if v is not None else None
                 for v in values]
        table = table.set_column(table.column_names.index(name), name, pa.array(noisy, table.schema.field(name).type))
    return table


def _without_fast_path(evaluator):
    """The task as the bootstrap sees it with no metric_terms: every resample calls metrics()."""
    from types import SimpleNamespace

    return SimpleNamespace(key=evaluator.key, config=evaluator.config, fit=evaluator.fit,
                           metrics=evaluator.metrics, metric_terms=lambda table: {}, resampler=lambda table: None)


@pytest.mark.parametrize(("task", "noise"), [
    ("oc20-s2ef", {"energy_pred": 0.05, "forces_pred": 0.02}),
    ("oc20-is2re", {"energy_pred": 0.05}),
    ("oc20-is2rs", {"pos_pred": 0.05}),
])
def test_fast_path_equals_metrics_on_every_resample(task, noise, tmp_path):
    """The OC20 tasks' metric_terms give, resample by resample, what metrics() gives."""
    import pyarrow.parquet as pq

    limit = 24 if task == "oc20-s2ef" else 5
    evaluate("emt", task, RunOptions(out=tmp_path, workers=0, limit=limit))
    table = _noisy_copy(pq.read_table(tmp_path / "emt" / f"{task}.parquet"), np.random.default_rng(0), noise)
    evaluator = evaluator_for(task)
    slow = _without_fast_path(evaluator)
    settings = BootstrapSettings(resamples=100, seed=3)
    fast, reference = u.replicates(evaluator, table, settings), u.replicates(slow, table, settings)
    assert set(fast.values) == set(reference.values) and len(fast.values) > 5
    for key, values in fast.values.items():
        np.testing.assert_allclose(values, reference.values[key], rtol=1e-9, atol=1e-12, err_msg=key)
        # shares that can sit at 0 or 1 in every resample (5 relaxations: 2 calibrate the alignment,
        # whose compositions span none of the other 3)
        assert np.ptp(values[np.isfinite(values)]) > 0 or key.removesuffix("_aligned").endswith(
            ("within_threshold", "converged_fraction", "aligned_coverage"))


@pytest.mark.parametrize("task", ["eos", "symmetry"])
def test_resamplers_equal_metrics_on_every_resample(task):
    """eos (delta_median from cumulative counts) and symmetry (every max and mean) resample all
    at once; on a committed result, every resample equals metrics() on the rows it draws."""
    import pyarrow.parquet as pq

    table = pq.read_table(TESTS.parent / "results" / "chgnet-0.3.0" / f"{task}.parquet")
    evaluator = evaluator_for(task)
    assert evaluator.resampler(table) is not None
    settings = BootstrapSettings(resamples=100, seed=5)
    fast = u.replicates(evaluator, table, settings)
    reference = u.replicates(_without_fast_path(evaluator), table, settings)
    assert set(fast.values) == set(reference.values)
    for key, values in fast.values.items():
        np.testing.assert_allclose(values, reference.values[key], rtol=1e-9, atol=1e-12, err_msg=key)
    headline = fast.values[evaluator.config.headline]
    assert np.ptp(headline) > 0


def test_count_matrices_are_bytes_that_hold_the_published_draws(monkeypatch):
    """Results record intervals from these draws: per resample, per stratum in sorted order,
    ``integers(0, m, m)`` of a generator seeded with the settings' seed, counted. A byte a
    count (not a float) changes none of them, however the resamples are chunked."""
    monkeypatch.setattr(u, "COUNT_CELLS", 600)  # 3 resamples a chunk of 200 rows
    labels = np.array(["b", "a", "b", "b", "a"] * 40)  # strata interleaved: index groups
    settings = BootstrapSettings(resamples=100, seed=9)
    for strata in (None, u.Strata.of(pa.array(labels))):
        chunks = list(u._draw_counts(labels.size, settings, strata))
        assert {c.dtype for c in chunks} == {np.dtype(np.uint8)} and len(chunks[0]) == 3
        rng = np.random.default_rng(9)
        groups = [np.arange(labels.size)] if strata is None else [np.flatnonzero(labels == s) for s in ("a", "b")]
        want = np.zeros((100, labels.size), dtype=np.int64)
        for b in range(100):
            for rows in groups:
                want[b] += np.bincount(rows[rng.integers(0, rows.size, rows.size)], minlength=labels.size)
        np.testing.assert_array_equal(np.concatenate(chunks), want)


def test_weighted_sums_are_the_product_in_row_blocks(monkeypatch):
    monkeypatch.setattr(u, "PRODUCT_CELLS", 50)  # 7 resamples: blocks of 7 rows, the last one short
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 4, (7, 1000)).astype(np.uint8)
    ones, values = np.ones(1000), rng.normal(size=(1000, 3))
    n, sums = u.weighted_sums(counts, [ones, values])
    np.testing.assert_array_equal(n, counts.sum(axis=1))  # integer sums: exact in any order
    np.testing.assert_allclose(sums, counts.astype(float) @ values, rtol=1e-12)
    assert sums.shape == (7, 3)


def test_sorted_median_is_numpys_median_of_the_draw():
    rng = np.random.default_rng(2)
    values = np.sort(rng.normal(size=9))
    counts = rng.integers(0, 3, (200, 9)).astype(float)
    counts[0] = 0  # draws nothing
    counts[1] = [0, 0, 0, 0, 4, 0, 0, 0, 0]
    got = u.sorted_median(values, counts)
    assert np.isnan(got[0])
    want = [np.median(np.repeat(values, c.astype(int))) for c in counts[1:]]
    np.testing.assert_array_equal(got[1:], want)


def test_split_metrics_share_the_overall_terms_and_keep_a_nan_in_its_split():
    """Per-split terms are the overall arrays plus the split's rows (no copy per split): each
    split's metrics and resamples are those of its rows alone, a NaN prediction in one split
    reaches neither the other split nor its intervals, and splits interleaved row by row are
    resampled exactly as the metrics() of every drawn table say."""
    import pyarrow.compute as pc

    from synthetic import s2ef_batches

    table = pa.concat_tables(s2ef_batches(90, atoms=6, per_group=30, seed=4))
    energy = table.column("energy_pred").to_numpy().copy()
    ood = np.flatnonzero(pc.equal(table.column("split"), "ood").to_numpy(zero_copy_only=False))
    energy[ood[2]] = np.nan
    table = table.set_column(table.column_names.index("energy_pred"), "energy_pred", pa.array(energy))
    evaluator = evaluator_for("oc20-s2ef")
    metrics = evaluator.metrics(table)
    alone = evaluator.metrics(table.filter(pc.equal(table.column("split"), "id")))
    for key, value in metrics["splits"]["id"].items():
        if "aligned" in key:  # the alignment is fitted on every split's calibration rows, not per split
            continue
        want = alone["splits"]["id"][key]
        assert value == pytest.approx(want, rel=1e-12), key
        assert key == "n" or want == pytest.approx(alone[key], rel=1e-12), key
    assert math.isnan(metrics["splits"]["ood"]["energy_mae"]) and math.isnan(metrics["energy_mae"])
    assert math.isfinite(metrics["splits"]["ood"]["forces_mae"])
    terms = evaluator.metric_terms(table)
    assert terms["splits.id.forces_mae"][0] is terms["forces_mae"][0]  # shared, not copied
    settings = BootstrapSettings(resamples=100, seed=1)
    fast = u.replicates(evaluator, table, settings)
    reference = u.replicates(_without_fast_path(evaluator), table, settings)
    assert set(fast.values) == set(reference.values)
    for key, values in fast.values.items():
        np.testing.assert_allclose(values, reference.values[key], rtol=1e-9, atol=1e-12, err_msg=key)
    assert np.isfinite(fast.values["splits.id.energy_mae"]).all()
    assert fast.interval("splits.id.energy_mae") is not None


def test_rows_grouped_by_split_draw_the_same_resamples():
    """Scoring groups OC20's reduced rows by split (each split's terms one block, read without a
    copy): every resample draws the same structures as on the rows in file order, so the
    metrics and every replicate agree up to the order of float sums."""
    from synthetic import s2ef_batches

    from mlip_zoo.evaluators import scoring

    evaluator = evaluator_for("oc20-s2ef")
    in_order = type("InOrder", (type(evaluator),), {"group_strata": False})(evaluator.config)
    grouped = scoring.reduce_all(evaluator, s2ef_batches(120, atoms=6, per_group=25, seed=2))
    as_read = scoring.reduce_all(in_order, s2ef_batches(120, atoms=6, per_group=25, seed=2))
    splits = grouped.column("split").to_pylist()
    assert splits == sorted(splits, key=splits.index) and as_read.column("split").to_pylist() != splits
    terms = evaluator.metric_terms(grouped)
    assert isinstance(terms["splits.ood.energy_mae"][2], slice)  # a block: no index array, no copy
    point, reference = u.flatten_metrics(evaluator.metrics(grouped)), u.flatten_metrics(in_order.metrics(as_read))
    assert point.keys() == reference.keys()
    for key, value in point.items():
        assert value == (None if reference[key] is None else pytest.approx(reference[key], rel=1e-12, nan_ok=True)), key
    settings = BootstrapSettings(resamples=100, seed=4)
    a, b = u.replicates(evaluator, grouped, settings), u.replicates(in_order, as_read, settings)
    assert set(a.values) == set(b.values) and len(a.values) > 20
    for key, values in a.values.items():
        np.testing.assert_allclose(values, b.values[key], rtol=1e-12, atol=1e-15, err_msg=key)


def test_terms_that_disagree_with_metrics_are_refused(runs, monkeypatch):
    import pyarrow.parquet as pq

    table = pq.read_table(runs["root"] / "results" / "low" / "oc20-s2ef.parquet")
    evaluator = evaluator_for("oc20-s2ef")

    class Own(type(evaluator)):  # metrics() stays the task's own, whatever the terms below say
        def metrics(self, table):
            return evaluator.metrics(table)

    class Wrong(Own):
        def metric_terms(self, table):
            total, numel = super().metric_terms(table)["energy_mae"]
            return {"energy_mae": (total * 2, numel)}

    class Squared(Own):  # right on the full set by construction, wrong on resamples
        def metric_terms(self, table):
            total, numel = super().metric_terms(table)["energy_mae"]
            scale = evaluator.metrics(table)["energy_mae"] * numel.sum() / (total ** 2).sum()
            return {"energy_mae": (total ** 2 * scale, numel)}

    with pytest.raises(MetricError, match="metric_terms gives energy_mae = .* but metrics"):
        u.replicates(Wrong(evaluator.config), table)
    with pytest.raises(MetricError, match="on a resample.*not a ratio of per-row sums"):
        u.replicates(Squared(evaluator.config), table)
    # a large table is checked on a resample kept on CHECK_ROWS rows: still caught
    monkeypatch.setattr(u, "CHECK_ROWS", 4)
    assert np.count_nonzero(u._check_counts(np.ones(table.num_rows))) <= 4 < table.num_rows
    with pytest.raises(MetricError, match="on a resample.*not a ratio of per-row sums"):
        u.replicates(Squared(evaluator.config), table)


# ---------------------------------------------------------------------------------------------
# Generic: a classification task, as matbench-discovery scores one, through the same machinery.


class Classify(Evaluator):
    """Stability classification with matbench-discovery's own metrics, one row per structure."""

    schema = pa.schema([pa.field("id", pa.string()), pa.field("status", pa.string()),
                        pa.field("each_true", pa.float64()), pa.field("each_pred", pa.float64())])

    def run(self, potential, records):
        raise NotImplementedError  # scored from a table the test builds

    def metrics(self, table: pa.Table) -> dict[str, Any]:
        from matbench_discovery.metrics import stable_metrics

        with np.errstate(all="ignore"):
            out = stable_metrics(table.column("each_true").to_numpy(), table.column("each_pred").to_numpy())
        return {k: int(v) if isinstance(v, (int, np.integer)) else float(v) for k, v in out.items()
                if k in ("F1", "DAF", "Precision", "Recall", "TP", "FP", "MAE")} | {"n": table.num_rows}


def _classify_config() -> TaskConfig:
    return TaskConfig(key="toy-stability", version="1", description="test", evaluator="none", dataset="none",
                      dataset_file="none", headline="F1",
                      metrics={"F1": MetricSpec(label="F1", higher_is_better=True)})


def test_classification_metrics_with_undefined_resamples(recwarn):
    rng = np.random.default_rng(0)
    n = 40
    each_true = rng.uniform(0.05, 0.5, n)
    each_true[:3] = [-0.1, -0.05, -0.02]  # 3 stable of 40: some resamples draw none
    each_pred = each_true + rng.normal(0, 0.03, n)
    table = pa.table({"id": [f"s{i}" for i in range(n)], "status": ["ok"] * n, "each_true": each_true,
                      "each_pred": each_pred})
    evaluator = Classify(_classify_config())
    metrics = evaluator.metrics(table)
    intervals, boot = u.intervals(evaluator, table, metrics)
    assert intervals["TP"] is None and intervals["FP"] is None and intervals["n"] is None  # counts
    for key in ("F1", "Precision", "Recall", "DAF", "MAE"):
        assert intervals[key] is not None, key
        assert intervals[key][0] <= metrics[key] <= intervals[key][1], key
    undefined = boot["undefined"]
    assert 0 < undefined["F1"] < 500  # resamples without a stable material: left out, counted
    # every resample of a stratified draw keeps each stratum's size
    strata = u.Strata.of(pa.array(["a"] * 10 + ["b"] * 30))
    for counts in u.resample_counts(n, BootstrapSettings(resamples=100), strata):
        assert (counts[:, :10].sum(axis=1) == 10).all() and (counts[:, 10:].sum(axis=1) == 30).all()


def test_bootstrap_settings_and_shard_size_stay_out_of_the_task_fingerprint():
    config = load_task_config("oc20-s2ef")
    other = config.model_copy(update={"bootstrap": BootstrapSettings(resamples=200, seed=5)})
    assert other.fingerprint() == config.fingerprint()
    assert config.model_copy(update={"shard_atoms": 7}).fingerprint() == config.fingerprint()
    assert config.bootstrap == BootstrapSettings()  # the YAML need not say anything
    with pytest.raises(ValueError, match="resamples"):
        BootstrapSettings(resamples=5)


def test_models_with_the_same_error_statistics_share_a_rank_range(runs):
    """Two copies of EMT with independent noise of the same size: their order is a coin flip, so
    both rank ranges span 1-2 and the pair is not significant; a noisier third is clearly last."""
    import pyarrow.parquet as pq

    table = pq.read_table(runs["root"] / "results" / "emt" / "oc20-s2ef.parquet")
    tables = {"a": _noisy_copy(table, np.random.default_rng(1), {"forces_pred": 0.05}),
              "b": _noisy_copy(table, np.random.default_rng(2), {"forces_pred": 0.05}),
              "c": _noisy_copy(table, np.random.default_rng(3), {"forces_pred": 0.08})}
    ranking = u.rank(evaluator_for("oc20-s2ef"), tables, "forces_mae", higher_is_better=False)
    assert ranking.rank_range == {"a": (1, 2), "b": (1, 2), "c": (3, 3)}
    assert ranking.indistinct("a") == ["b"] and ranking.indistinct("c") == []
    d = ranking.pairs[("a", "b")]
    assert d.interval[0] < 0 < d.interval[1] and d.interval[0] < d.difference < d.interval[1]


def test_percentile_interval_needs_half_the_resamples_defined():
    values = np.r_[np.arange(60.0), np.full(40, np.nan)]
    assert u.percentile_interval(values, 0.9) == pytest.approx(np.percentile(np.arange(60.0), [5, 95]).tolist())
    assert u.percentile_interval(np.r_[np.arange(40.0), np.full(60, np.nan)], 0.9) is None
    assert u.is_estimate(0.5) and not u.is_estimate(3) and not u.is_estimate(True) and not u.is_estimate(float("nan"))


def test_discovery_resampler_equals_metrics_on_every_resample():
    """Discovery's vectorised resamples (F1, DAF, RMSE, R2, the most-stable subset from one sort
    and cumulative counts) give, resample by resample, what metrics() gives on the drawn rows:
    ties in each_pred, failed rows, a NaN label and a most-stable cut inside a run of copies."""
    rng = np.random.default_rng(5)
    n = 300
    evaluator = evaluator_for("discovery")
    each_true = rng.normal(0.05, 0.1, n)
    each_true[7] = np.nan
    e_form_dft = rng.normal(-1.0, 0.5, n)
    e_form_pred = np.round(e_form_dft + rng.normal(0.0, 0.05, n), 2)  # rounding makes ties
    status = np.where(rng.random(n) < 0.05, "failed", "ok")
    table = pa.table({"id": [f"r{i}" for i in range(n)], "status": status, "converged": rng.random(n) < 0.9,
                      "each_true": each_true, "e_form_pred": np.where(status == "ok", e_form_pred, np.nan),
                      "e_form_dft": e_form_dft, "unique_prototype": rng.random(n) < 0.7})
    config = evaluator.config.model_copy(update={"options": {**evaluator.config.options, "most_stable_n": 40}})
    evaluator = evaluator_for(config)
    settings = BootstrapSettings(resamples=200, seed=11)
    fast, reference = u.replicates(evaluator, table, settings), u.replicates(_without_fast_path(evaluator), table,
                                                                             settings)
    assert set(fast.values) == set(reference.values) and "subsets.most_stable.F1" in fast.values
    for key, values in fast.values.items():
        np.testing.assert_allclose(values, reference.values[key], rtol=1e-9, atol=1e-12, err_msg=key)


def test_align_matches_ids_in_the_first_tables_order_and_refuses_duplicates():
    a = pa.table({"id": ["c", "a", "b", "d"], "x": [3, 1, 2, 4]})
    b = pa.table({"id": ["b", "e", "c", "a"], "x": [20, 50, 30, 10]})
    aligned, common = u.align({"a": a, "b": b})
    assert common.to_pylist() == ["c", "a", "b"]
    assert aligned["a"].column("x").to_pylist() == [3, 1, 2] and aligned["b"].column("x").to_pylist() == [30, 10, 20]
    same, _ = u.align({"a": a, "again": a})
    assert same["a"] is a and same["again"] is a  # already in order: used as they are
    with pytest.raises(DatasetError, match="b: duplicate structure ids"):
        u.align({"a": a, "b": pa.table({"id": ["a", "b", "a"], "x": [1, 2, 3]})})
