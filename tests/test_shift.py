"""Shift axes, training statistics, radius refinement and the ood-shift task (issue 5)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from mlip_zoo.evaluators.record import ResultRecord
from mlip_zoo.errors import CapabilityNotSupportedError, DatasetError
from mlip_zoo.evaluators.base import evaluator_for, load_task_config
from mlip_zoo.evaluators.data import resolve_dataset, sha256_file
from mlip_zoo.evaluators.oc20.make_mini import ase_json_db
from mlip_zoo.evaluators.shift import spectra
from mlip_zoo.evaluators.shift import stats as shift_stats
from mlip_zoo.evaluators.shift.stats import StatsConfig, training_stats


def labelled(atoms: Atoms, sid: str, **info) -> Atoms:
    atoms = atoms.copy()
    atoms.calc = EMT()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    atoms.info = {"sid": sid, **info}
    return atoms


def cu_cell(seed: int, symbol: str = "Cu", rattle: float = 0.05) -> Atoms:
    atoms = bulk(symbol, "fcc", a=3.6, cubic=True) * (2, 2, 1)
    atoms.rattle(rattle, seed=seed)
    return atoms


def write_set(path, images):
    ase_json_db(path, images)
    return path


# -- spectra ---------------------------------------------------------------------------------


def test_radius_graph_of_a_molecule_is_the_plain_radius_graph():
    benzene = molecule("C6H6")
    expected = (benzene.get_all_distances() < 2.0).astype(float)  # the diagonal is the self loop
    assert np.array_equal(spectra.adjacency(benzene, 2.0), expected)


def test_periodic_graph_counts_images_and_is_symmetric():
    single = bulk("Cu", "fcc", a=3.6)  # one atom: its 12 nearest neighbours are all its own images
    assert spectra.adjacency(single, 3.0).tolist() == [[13.0]]
    cell = cu_cell(0)
    for radius in spectra.RADII:
        a = spectra.adjacency(cell, radius)
        assert np.array_equal(a, a.T)
    assert np.allclose(spectra.adjacency(bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1), 3.0).sum(axis=1), 13)
    moved = cell.copy()
    moved.rotate(37, "x", rotate_cell=True)
    moved.translate([0.3, -1.1, 2.0])
    assert np.allclose(spectra.laplacian_spectrum(moved, 5.0), spectra.laplacian_spectrum(cell, 5.0), atol=1e-10)


def test_nearest_fifty_neighbours_cap():
    cell = cu_cell(1)
    capped, full = spectra.adjacency(cell, 9.0), spectra.adjacency(cell, 9.0, max_neighbors=10_000)
    off_diagonal = capped.sum(axis=1) - 1  # without the self loop
    assert np.all(off_diagonal >= 50)  # each atom keeps its nearest 50, plus edges its neighbours kept
    assert np.all(capped.sum(axis=1) < full.sum(axis=1))
    spectrum = spectra.laplacian_spectrum(cell, 9.0)
    assert np.all(np.diff(spectrum) >= 0) and spectrum[0] == pytest.approx(0, abs=1e-12) and spectrum[-1] <= 2


def test_distance_zero_pads_the_shorter_spectrum():
    assert spectra.spectral_distance(np.array([0.0, 1.0]), np.array([0.0, 1.0, 0.5])) == pytest.approx(0.25)
    assert spectra.mean_spectrum([np.array([1.0]), np.array([1.0, 2.0])]).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("index", [1, 6, 8])
def test_refine_radius_returns_the_radius_the_case_was_built_for(index):
    """A training structure's spectrum at 5 Å is the mean; the test structure is that structure
    scaled by r/5, so its graph at r (and only there) is the training graph."""
    target = float(spectra.RADII[index])
    train = cu_cell(2, rattle=0.2)  # rattled: distinct distances, so neighbouring radii give other graphs
    mean = spectra.laplacian_spectrum(train, 5.0)
    test = train.copy()
    test.set_cell(train.cell * (target / 5.0), scale_atoms=True)
    distances = spectra.radius_distances(test, mean)
    assert spectra.refine_radius(test, mean) == target
    assert distances[index] == pytest.approx(0, abs=1e-20)
    assert np.all(np.delete(distances, index) > 1e-6)


# -- training statistics and the three axes -----------------------------------------------------


@pytest.fixture
def train_file(tmp_path):
    images = [labelled(cu_cell(s), f"train-{s}") for s in range(4)]
    return write_set(tmp_path / "train.json", images)


def test_element_shift_is_one_for_a_training_absent_element(train_file, tmp_path):
    stats, _ = training_stats(train_file)
    assert stats.element_shift(cu_cell(9, "Au")) == 1.0
    half = cu_cell(9)
    half.symbols[::2] = "Au"
    assert stats.element_shift(half) == 0.5
    assert stats.element_shift(cu_cell(9)) == 0.0
    assert stats.element.mean == 0.0 and stats.is_ood("element", 0.5) and not stats.is_ood("element", 0.0)
    # rare: one Ag atom among 64 Cu is 1/64 of training atoms, below rare_fraction=0.02
    with_ag = cu_cell(3)
    with_ag.symbols[0] = "Ag"
    rare = write_set(tmp_path / "rare.json", [labelled(cu_cell(1), "a"), labelled(with_ag, "b")])
    stats, _ = training_stats(rare, StatsConfig(rare_fraction=0.02))
    assert stats.element_fraction["Ag"] == pytest.approx(1 / 32)
    stats, _ = training_stats(rare, StatsConfig(rare_fraction=0.05))
    assert stats.element_shift(with_ag) == pytest.approx(1 / 16)


def test_copy_of_a_training_structure_has_connectivity_distance_zero(tmp_path):
    geometry = cu_cell(4)
    same_graph = []
    for k, symbol in enumerate(("Cu", "Ag", "Au")):  # one geometry, three chemistries and label sets
        atoms = geometry.copy()
        atoms.symbols[:] = symbol
        same_graph.append(labelled(atoms, f"t{k}"))
    stats, _ = training_stats(write_set(tmp_path / "t.json", same_graph))
    # zero up to the round-off of averaging three equal spectra (~1e-32)
    assert stats.connectivity_shift(same_graph[1].copy()) == pytest.approx(0, abs=1e-24)
    assert stats.connectivity.mean == pytest.approx(0, abs=1e-24) and stats.connectivity.std < 1e-24
    surface = fcc111("Cu", size=(2, 2, 4), a=3.6, vacuum=10.0, periodic=True)
    assert stats.connectivity_shift(surface) > 0.01 and stats.is_ood("connectivity", stats.connectivity_shift(surface))


def test_ood_is_two_sided_for_force_norm_and_upper_for_distances(train_file):
    stats, _ = training_stats(train_file)
    for axis in shift_stats.AXES:
        m = stats.moments(axis)
        assert stats.is_ood(axis, m.mean + 1.01 * m.std + 1e-12) and not stats.is_ood(axis, m.mean + 0.99 * m.std)
    f, c = stats.force_norm, stats.connectivity
    assert stats.is_ood("force_norm", f.mean - 1.01 * f.std)  # unusually small forces are a label shift too
    assert not stats.is_ood("connectivity", c.mean - 1.01 * c.std)  # closer to the training spectrum: no shift


def test_statistics_follow_their_definitions(train_file):
    from mlip_zoo.evaluators.data import iter_records

    stats, _ = training_stats(train_file, StatsConfig(radius=4.0))
    records = list(iter_records(train_file))
    norms = [np.linalg.norm(a.calc.results["forces"], axis=1).mean() for a in records]
    assert stats.force_norm.mean == pytest.approx(np.mean(norms), rel=1e-12)
    assert stats.force_norm.std == pytest.approx(np.std(norms), rel=1e-12)
    specs = [spectra.laplacian_spectrum(a, 4.0) for a in records]
    mean = np.mean(specs, axis=0)
    distances = [float(np.sum((s - mean) ** 2)) for s in specs]
    assert np.allclose(stats.spectrum_mean, mean, atol=1e-14)
    assert stats.connectivity.mean == pytest.approx(np.mean(distances), rel=1e-10)
    assert stats.connectivity.std == pytest.approx(np.std(distances), rel=1e-10)
    hot = records[0].calc.results["forces"] * 3
    assert stats.scores(records[0], hot)["force_norm"] == pytest.approx(3 * norms[0])


def test_statistics_are_cached_by_reference_sha256_and_config(train_file, tmp_path, monkeypatch):
    stats, path = training_stats(train_file)
    assert path.parent == tmp_path / "mlipzoo-cache" / "shift-stats"
    assert json.loads(path.read_text())["reference"]["sha256"] == sha256_file(train_file)
    with monkeypatch.context() as patched:
        patched.setattr(shift_stats, "compute_stats", lambda *a, **k: pytest.fail("recomputed a cached set"))
        assert training_stats(train_file) == (stats, path)
    _, other = training_stats(train_file, StatsConfig(radius=6.0))
    assert other != path
    path.write_text("{broken")
    assert training_stats(train_file) == (stats, path)  # a corrupt cache file is recomputed
    write_set(train_file, [labelled(cu_cell(s), f"train-{s}") for s in range(3)])
    _, changed = training_stats(train_file)
    assert changed != path


def test_reference_without_forces_is_refused(tmp_path):
    plain = cu_cell(0)
    plain.info["sid"] = "x"
    with pytest.raises(DatasetError, match="reference forces"):
        training_stats(write_set(tmp_path / "nolabels.json", [plain]))


# -- the task -----------------------------------------------------------------------------------


def _row(rid, split, de, df, shifts, ood, n=2):
    ft = np.arange(3 * n, dtype=float).reshape(n, 3) + 1
    return {"id": rid, "split": split, "n_atoms": n, "status": "ok", "reason": None, "seconds": 0.1,
            "energy_true": 1.0, "energy_pred": 1.0 + de, "forces_true": ft.ravel().tolist(),
            "forces_pred": (ft + df).ravel().tolist(), "free": [True] * n,
            **{f"shift_{a}": s for a, s in zip(shift_stats.AXES, shifts)},
            **{f"ood_{a}": o for a, o in zip(shift_stats.AXES, ood)}}


def test_metrics_by_distribution_axis_and_bin():
    evaluator = evaluator_for("ood-shift")
    rows = [_row("a", "none", 0.2, 0.0, (0.0, 0.8, 0.01), (False, False, False)),
            _row("b", "element", 0.4, 0.3, (1.0, 0.8, 0.01), (True, False, False)),
            _row("c", "force_norm", -0.6, 0.6, (0.0, 2.2, 0.01), (False, True, False)),
            {**_row("d", "none", 0, 0, (0.0, 0.8, 0.01), (False, False, False)), "status": "failed",
             "reason": "boom", "energy_pred": None, "forces_pred": None},
            # a fixed atom's force error is not scored
            {**_row("e", "connectivity", 0.0, 0.0, (0.0, 0.8, 0.5), (False, False, True)), "free": [True, False],
             "forces_pred": (np.arange(6.0) + 1 + [0, 0, 0, 5, 5, 5]).tolist()}]
    table = pa.Table.from_pylist(rows, schema=evaluator.schema)
    m = evaluator.metrics(table)
    assert m["n"] == 4 and m["id_n"] == 1 and m["ood_n"] == 3 and m["ood_fraction"] == pytest.approx(3 / 4)
    assert m["energy_per_atom_mae"] == pytest.approx((0.1 + 0.2 + 0.3 + 0) / 4)
    assert m["forces_mae"] == pytest.approx((0.0 * 6 + 0.3 * 6 + 0.6 * 6 + 0.0 * 3) / 21)
    assert m["ood_forces_mae"] == pytest.approx((0.3 * 6 + 0.6 * 6) / 15) and m["id_forces_mae"] == pytest.approx(0.0, abs=1e-12)
    assert m["splits"]["connectivity"]["forces_mae"] == pytest.approx(0.0, abs=1e-12) and m["splits"]["connectivity"]["n"] == 1
    assert m["axes"]["element"]["ood"]["n"] == 1 and m["axes"]["element"]["ood"]["forces_mae"] == pytest.approx(0.3)
    assert m["axes"]["force_norm"]["ood_fraction"] == pytest.approx(1 / 4)
    bins = m["axes"]["element"]["bins"]
    assert bins["bin0"]["range"] == "< 0.001" and bins["bin0"]["n"] == 3 and bins["bin5"] == {
        "range": ">= 1", "energy_per_atom_mae": pytest.approx(0.2), "forces_mae": pytest.approx(0.3),
        "forces_cosine": pytest.approx(m["axes"]["element"]["ood"]["forces_cosine"]), "n": 1}
    assert sum(b["n"] for b in m["axes"]["force_norm"]["bins"].values()) == 4
    assert m["axes"]["connectivity"]["bins"]["bin0"]["n"] == 3  # 0.01 < 0.025
    assert m["splits"]["force_norm"]["n"] == 1 and m["axes"]["connectivity"]["bins"]["bin1"]["forces_mae"] is None
    assert m["id_forces_cosine"] == pytest.approx(1.0)
    # the bootstrap's fast path: every ratio of sums equals the number metrics() reports
    from mlip_zoo.evaluators.result import flatten_metrics

    flat = flatten_metrics(m)
    for key, (total, numel) in evaluator.metric_terms(table).items():
        value = np.sum(total) / np.sum(numel) if np.sum(numel) else None
        assert (value is None and flat[key] is None) or value == pytest.approx(flat[key], rel=1e-12), key


def test_ood_shift_end_to_end_with_emt(train_file, tmp_path):
    """EMT labelled the data, so it scores perfectly; shifts land on the axes they were built on."""
    from mlip_zoo.evaluators.runner import RunOptions, evaluate

    au = labelled(cu_cell(7, "Au"), "au", split="element")
    hot = labelled(cu_cell(8, rattle=0.3), "hot", split="force_norm")
    slab = labelled(fcc111("Cu", size=(2, 2, 4), a=3.6, vacuum=10.0, periodic=True), "slab", split="connectivity")
    copy = labelled(cu_cell(0), "copy", split="none")
    test = write_set(tmp_path / "test.json", [copy, au, hot, slab])
    config = load_task_config("ood-shift")
    config = config.model_copy(update={"options": {**config.options, "reference": str(train_file)}})
    record = evaluate("emt", config, RunOptions(out=tmp_path / "out", dataset=test, workers=0))
    m = record.metrics
    assert m["forces_mae"] < 1e-9 and m["energy_per_atom_mae"] < 1e-9 and m["forces_cosine"] == pytest.approx(1.0)
    table = pa.parquet.read_table(tmp_path / "out" / "emt" / "ood-shift.parquet").to_pylist()
    by_id = {r["id"]: r for r in table}
    assert by_id["au"]["shift_element"] == 1.0 and by_id["au"]["ood_element"]
    assert by_id["hot"]["ood_force_norm"] and not by_id["hot"]["ood_element"]
    assert by_id["slab"]["ood_connectivity"] and by_id["slab"]["shift_connectivity"] > by_id["copy"]["shift_connectivity"]
    assert by_id["copy"]["shift_element"] == 0.0 and not by_id["copy"]["ood_element"]
    inputs = record.provenance.task_inputs["training_stats"]
    assert inputs["reference"]["sha256"] == sha256_file(train_file)
    assert sha256_file(__import__("pathlib").Path(inputs["file"])) == inputs["sha256"]
    # the site's task page plots the force error per bin of each axis, from these metrics
    from mlip_zoo.leaderboard.site import build_site

    build_site(tmp_path / "out", tmp_path / "site")
    page = (tmp_path / "site" / "tasks" / "ood-shift.html").read_text()
    assert all(f'data-kind="shift" data-axis="{a}"' in page for a in shift_stats.AXES)
    plot_data = json.loads(page.split('id="plot-data">')[1].split("</script>")[0])
    shift = plot_data["models"]["emt"]["shift"]["element"]
    assert shift["n"] == [b["n"] for b in m["axes"]["element"]["bins"].values()] and shift["y"][-1] == 0.0


def test_cli_reference_option_swaps_the_training_set(train_file, tmp_path):
    from typer.testing import CliRunner

    from mlip_zoo.cli import app

    args = ["--limit", "2", "--workers", "0", "--out", str(tmp_path / "out"), "--wandb", "disabled", "--json"]
    result = CliRunner().invoke(app, ["eval", "emt", "ood-shift", "--reference", str(train_file), *args])
    assert result.exit_code == 0, result.output
    record = ResultRecord.model_validate_json(result.stdout)  # --json prints the record
    assert record.provenance.task_inputs["training_stats"]["reference"]["sha256"] == sha256_file(train_file)
    wrong = CliRunner().invoke(app, ["eval", "emt", "oc20-s2ef", "--reference", str(train_file), *args])
    assert wrong.exit_code != 0 and "--reference is for ood-shift and ttr" in wrong.output


def test_embedded_mini_sets_match_their_manifest():
    for name in ("train.json", "test.json"):
        dataset = resolve_dataset("shift-mini", name)  # checks the manifest's sha256
        assert dataset.name == "shift-mini (EMT labels)" and dataset.n


def test_mptrj_statistics_match_their_manifest_and_each_other():
    import gzip

    from mlip_zoo.evaluators.data import datasets_dir

    folder = datasets_dir() / "mptrj-stats"
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        assert sha256_file(folder / name) == entry["sha256"], name
    assert manifest["source"]["license"] == "MIT"
    by_atom = json.loads((folder / "mp-trj-element-counts-by-composition.json").read_text())
    by_frame = json.loads((folder / "mp-trj-element-counts-by-occurrence.json").read_text())
    with gzip.open(folder / "mp-trj-hists.json.gz", "rt") as f:
        hists = json.load(f)
    n_atoms = sum(v for v in by_atom.values() if v)
    sizes = hists["n-sites"]
    assert sum(x * y for x, y in zip(sizes["x"], sizes["y"])) == pytest.approx(n_atoms, abs=20)
    assert sum(v or 0 for v in hists["forces"]["y"]) == 3 * n_atoms  # pooled |x|, |y|, |z| components
    assert {k for k, v in by_atom.items() if v} == {k for k, v in by_frame.items() if v}
    assert by_frame["O"] < sum(sizes["y"]) < sum(v for v in by_frame.values() if v)


def test_with_cutoff_needs_the_capability():
    from mlip_zoo.zoo import load_potential

    with pytest.raises(CapabilityNotSupportedError, match="radius_refinement"):
        load_potential("emt").with_cutoff(4.0)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["chgnet-0.3.0", "sevennet-0"])
def test_with_cutoff_changes_the_graph_radius_and_restores_it(key):
    from mlip_zoo.zoo import load_potential

    potential = load_potential(key)
    cell = cu_cell(5)
    (before,) = potential.predict([cell])
    shrunk = potential.with_cutoff(4.0)
    assert shrunk.cutoff == 4.0 and shrunk.requested_cutoff == 4.0
    (small,) = shrunk.predict([cell])
    assert abs(small.energy - before.energy) > 1e-3  # fewer neighbours, another prediction
    wide = potential.with_cutoff(9.0)
    assert wide.cutoff == potential.cutoff and wide.requested_cutoff == 9.0  # capped at the trained cutoff
    (same,) = wide.predict([cell])
    assert same.energy == pytest.approx(before.energy, abs=1e-4)
    (after,) = potential.predict([cell])
    # Restored: the same prediction again, up to float32 round-off (torch's multi-threaded
    # scatter-adds may sum SevenNet's forces in another order from one call to the next).
    assert after.energy == pytest.approx(before.energy, rel=1e-6)
    np.testing.assert_allclose(after.forces, before.forces, rtol=1e-5, atol=1e-6)
