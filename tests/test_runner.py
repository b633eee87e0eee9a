"""The evaluation engine end to end: EMT labelled oc20-mini, so EMT must score perfectly; resume
after SIGKILL; 1 vs 2 Dask workers; failures recorded, never fatal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from ase.build import add_adsorbate, bulk, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.io import write

from mlip_zoo.errors import DatasetError, UntrustedDataError
from mlip_zoo.evaluators.runner import RunOptions, evaluate
from mlip_zoo.zoo import read_card

from labels import assert_reproduces_labels, near_label

TESTS = Path(__file__).parent


@pytest.mark.labels
def test_emt_scores_perfectly_on_oc20_mini_s2ef(tmp_path):
    record = evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path, workers=0))
    m = record.metrics
    assert record.n_failed == 0 and record.n_structures > 100
    assert_reproduces_labels(record)  # energies, forces, cosine, EFwT within 1e-9 of perfect
    assert set(m["splits"]) == {"id", "ood_ads", "ood_cat", "ood_both"}
    assert all(s["n"] > 0 and near_label(s["energy_mae"], "oc20-s2ef", "energy_mae") for s in m["splits"].values())
    assert record.dataset.name == "oc20-mini (EMT labels)"
    saved = json.loads((tmp_path / "emt" / "oc20-s2ef.json").read_text())
    assert saved["metrics"] == json.loads(json.dumps(m))
    table = pq.read_table(tmp_path / "emt" / saved["predictions"])
    assert table.num_rows == record.n_structures
    prov = saved["provenance"]
    assert prov["card_sha256"] and prov["packages"]["ase"] and prov["hardware"]["n_workers"] == 0


@pytest.mark.labels
def test_emt_scores_perfectly_on_is2re_and_is2rs_sharing_one_relaxation(tmp_path):
    opts = RunOptions(out=tmp_path, workers=0, limit=24)
    is2re = evaluate("emt", "oc20-is2re", opts)
    assert_reproduces_labels(is2re)
    shards = sorted((tmp_path / "emt" / ".shards").rglob("shard-*.parquet"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    is2rs = evaluate("emt", "oc20-is2rs", opts)
    assert_reproduces_labels(is2rs)
    # IS2RS reused IS2RE's relaxations: no shard was written again.
    assert sorted((tmp_path / "emt" / ".shards").rglob("shard-*.parquet")) == shards
    assert [p.stat().st_mtime_ns for p in shards] == stamps


def _labelled_slabs(n: int, *, extra=()):
    """A few EMT-labelled OC20-style frames: Cu(111) + O, tags, fixed subsurface. Positions are
    rounded to the 8 decimals extxyz stores, so the labels hold for what a reader gets back."""
    frames = []
    for i in range(n):
        slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)
        slab.set_tags([0 if t > 1 else 1 for t in slab.get_tags()])
        add_adsorbate(slab, "O", 1.6 + 0.05 * i, "fcc")
        slab.set_tags([*slab.get_tags()[:-1], 2])
        slab.set_constraint(FixAtoms(mask=slab.get_tags() == 0))
        slab.rattle(0.03, seed=i)
        slab.positions = np.round(slab.positions, 8)
        slab.cell = np.round(slab.cell[:], 8)
        slab.info.update({"sid": f"t{i}", "fid": 0, "split": "id"})
        frames.append(slab)
    for atoms in frames:
        ref = atoms.copy()
        ref.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=ref.get_potential_energy(), forces=ref.get_forces())
    for atoms in extra:  # structures EMT cannot label get placeholder labels
        atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=np.zeros((len(atoms), 3)))
    return frames + list(extra)


def test_failures_are_recorded_and_everything_else_scored(tmp_path, card_dir, monkeypatch):
    fe = bulk("Fe", "bcc", a=2.87) * 2
    fe.info.update({"sid": "iron", "fid": 0, "split": "id"})
    frames = _labelled_slabs(6, extra=[fe])
    frames[2].info["explode"] = True
    data = tmp_path / "set.extxyz"
    write(data, frames, format="extxyz")
    monkeypatch.syspath_prepend(str(TESTS))
    card = read_card(card_dir("exploding-emt", """\
        key: exploding-emt
        name: EMT that fails on marked structures
        version: "1"
        family: ase
        calculator: "fake_calcs:ExplodingEMT"
        license: MIT
        targets: EFS
        elements: [Al, Cu, Ag, Au, Ni, Pd, Pt, H, C, N, O]
        """))
    record = evaluate(card, "oc20-s2ef", RunOptions(out=tmp_path / "out", dataset=data, workers=0))
    reasons = {f.id: f.reason for f in record.failures}
    assert set(reasons) == {"t2_0", "iron_0"}
    assert "model blew up" in reasons["t2_0"]
    assert "UnsupportedElementError" in reasons["iron_0"] and "Fe" in reasons["iron_0"]
    assert record.n_structures == 7 and record.n_failed == 2
    # extxyz stores forces with 8 decimals, so the reference forces carry up to 5e-9 of rounding
    assert record.metrics["energy_mae"] < 1e-9 and record.metrics["forces_mae"] < 1e-8


def test_duplicate_ids_are_found_by_8_byte_hashes_and_a_collision_refuses_nothing(tmp_path, monkeypatch):
    from mlip_zoo.evaluators import shards
    from mlip_zoo.evaluators.plan import make_plan

    frames = _labelled_slabs(6)
    for i, atoms in enumerate(frames):
        atoms.info["sid"] = f"s{i}"
    data = tmp_path / "ids.extxyz"
    write(data, frames, format="extxyz")
    plan = make_plan("emt", "oc20-s2ef", RunOptions(out=tmp_path, dataset=data, workers=0))
    monkeypatch.setattr(shards.SeenIds, "RECENT", 2)  # merges into the sorted array along the way
    monkeypatch.setattr(shards.SeenIds, "_hash", staticmethod(lambda rid: 7))  # every id collides
    seen = shards.SeenIds(plan)
    for i in range(6):
        seen.add(f"s{i}_0", i)  # distinct ids, one hash: confirmed against the dataset, kept
    assert seen.exact == {f"s{i}_0" for i in range(6)}
    with pytest.raises(DatasetError, match=r"duplicate structure id 's2_0' \(record 6\), first at record 2"):
        seen.add("s2_0", 6)


def test_duplicate_ids_and_unlabelled_records_are_dataset_errors(tmp_path):
    frames = _labelled_slabs(2)
    frames[1].info["sid"] = "t0"
    data = tmp_path / "dup.extxyz"
    write(data, frames, format="extxyz")
    with pytest.raises(DatasetError, match="duplicate structure id 't0_0'"):
        evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path, dataset=data, workers=0))
    bare = _labelled_slabs(1)[0]
    bare.calc = None
    write(tmp_path / "bare.extxyz", [bare], format="extxyz")
    with pytest.raises(DatasetError, match="record t0_0: S2EF needs reference energy and forces"):
        evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path, dataset=tmp_path / "bare.extxyz", workers=0))


def test_ase_db_and_aselmdb_readers_give_the_same_result(tmp_path):
    import ase.db

    frames = _labelled_slabs(3)
    results = []
    for name, kind in (("set.db", None), ("set.aselmdb", "aselmdb")):
        path = tmp_path / name
        with ase.db.connect(str(path), type=kind) if kind else ase.db.connect(str(path)) as db:
            for atoms in frames:
                db.write(atoms, sid=atoms.info["sid"], fid=0, split="id")
        rec = evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path / f"out-{name}", dataset=path, workers=0))
        results.append(rec.metrics)
    # Both round-trip positions through their storage: agreement to float64 round-off.
    for key in ("energy_mae", "forces_mae"):
        assert results[0][key] == pytest.approx(results[1][key], abs=1e-12) and results[0][key] < 1e-12
    assert results[0]["energy_forces_within_threshold"] == results[1]["energy_forces_within_threshold"] == 1.0


def test_legacy_lmdb_needs_trust_pickle(tmp_path):
    path = tmp_path / "data.lmdb"
    path.write_bytes(b"")
    with pytest.raises(UntrustedDataError, match="--trust-pickle"):
        evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path, dataset=path, workers=0))


def test_two_workers_give_the_same_numbers_as_one(tmp_path):
    one = evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path / "w1", workers=1, limit=150))
    two = evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path / "w2", workers=2, limit=150))
    assert one.metrics == two.metrics and one.n_structures == two.n_structures == 150
    t1 = pq.read_table(tmp_path / "w1" / "emt" / "oc20-s2ef.parquet").drop(["seconds"])
    t2 = pq.read_table(tmp_path / "w2" / "emt" / "oc20-s2ef.parquet").drop(["seconds"])
    assert t1.equals(t2)


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_with_identical_metrics(tmp_path):
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "slow-emt.yaml").write_text(textwrap.dedent("""\
        key: slow-emt
        name: EMT, slowly
        version: "1"
        family: ase
        calculator: "fake_calcs:SlowEMT"
        calculator_kwargs: {delay: 0.02}
        license: MIT
        targets: EFS
        """))
    env = {**os.environ, "MLIPZOO_CARDS": str(cards), "PYTHONPATH": str(TESTS)}
    cmd = [sys.executable, "-m", "mlip_zoo.cli", "eval", "slow-emt", "oc20-s2ef", "--workers", "0",
           "--limit", "200"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.rglob("shard-*.parquet"))) < 2:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(out.rglob("shard-*.parquet")))
    assert done_before >= 2 and not (out / "slow-emt" / "oc20-s2ef.json").exists()

    subprocess.run([*cmd, "--out", str(out)], env=env, check=True, capture_output=True)
    subprocess.run([*cmd, "--out", str(tmp_path / "clean")], env=env, check=True, capture_output=True)
    resumed = json.loads((out / "slow-emt" / "oc20-s2ef.json").read_text())
    clean = json.loads((tmp_path / "clean" / "slow-emt" / "oc20-s2ef.json").read_text())
    assert json.dumps(resumed["metrics"], sort_keys=True) == json.dumps(clean["metrics"], sort_keys=True)
    ids = pq.read_table(out / "slow-emt" / "oc20-s2ef.parquet").column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 200


@pytest.mark.labels
def test_existing_scheduler_is_used(tmp_path):
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        record = evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path, scheduler=cluster.scheduler_address, limit=40))
    assert record.n_structures == 40
    assert_reproduces_labels(record)


def test_slurm_cluster_config_becomes_a_job_script(tmp_path):
    from mlip_zoo.errors import ConfigError
    from mlip_zoo.evaluators.clusters import slurm_cluster

    config = tmp_path / "slurm.yaml"
    config.write_text("queue: gpu-short\ncores: 4\nmemory: 16GB\nwalltime: '01:00:00'\n"
                      "python: /shared/envs/sevenn/bin/python\njob_extra_directives: ['--gres=gpu:1']\njobs: 3\n")
    cluster, jobs = slurm_cluster(config)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert jobs == 3
    assert "#SBATCH -p gpu-short" in script and "#SBATCH --gres=gpu:1" in script
    assert "/shared/envs/sevenn/bin/python -m distributed.cli.dask_worker" in script
    config.write_text("queue: q\ncores: 1\nmemory: 1GB\nbogus_option: 1\n")
    with pytest.raises(ConfigError, match="not a valid SLURMCluster argument"):
        slurm_cluster(config)


def test_legacy_oc20_lmdb_reads_with_trust_pickle(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    torch = pytest.importorskip("torch")
    pyg = pytest.importorskip("torch_geometric.data")
    import pickle

    frames = _labelled_slabs(3)
    path = tmp_path / "s2ef.lmdb"
    env = lmdb.open(str(path), subdir=False, map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, atoms in enumerate(frames):
            data = pyg.Data(pos=torch.tensor(atoms.positions), cell=torch.tensor(atoms.cell[:]).view(1, 3, 3),
                            atomic_numbers=torch.tensor(atoms.numbers, dtype=torch.float),
                            natoms=len(atoms), tags=torch.tensor(atoms.get_tags()),
                            fixed=torch.tensor(atoms.get_tags() == 0, dtype=torch.float),
                            sid=i, fid=0, y=float(atoms.get_potential_energy()),
                            force=torch.tensor(atoms.get_forces(apply_constraint=False)))
            txn.put(str(i).encode(), pickle.dumps(data))
        txn.put(b"length", pickle.dumps(len(frames)))
    env.close()
    record = evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path / "out", dataset=path, workers=0,
                                                     trust_pickle=True))
    assert record.n_structures == 3 and record.n_failed == 0
    assert record.metrics["energy_mae"] < 1e-9 and record.metrics["forces_mae"] < 1e-9  # labelled in the test


def test_one_cluster_serves_many_evaluations(tmp_path):
    from mlip_zoo.evaluators.runner import Clusters

    with Clusters(RunOptions(workers=2)) as clusters:
        shared = [evaluate("emt", task, RunOptions(out=tmp_path / "shared", workers=2, limit=limit), clusters=clusters)
                  for task, limit in (("oc20-s2ef", 40), ("oc20-is2re", 8))]
        assert clusters.client().status == "running"  # still open for the next pair
    alone = [evaluate("emt", task, RunOptions(out=tmp_path / "alone", workers=0, limit=limit))
             for task, limit in (("oc20-s2ef", 40), ("oc20-is2re", 8))]
    assert [r.metrics for r in shared] == [r.metrics for r in alone]
