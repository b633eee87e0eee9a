"""The bad-input catalogue: each class of bad input gets a clear error naming the file, field or
structure (and what to do), and every other result stays intact. The summary line of a test run
counts the classes ("bad-input catalogue: N classes handled")."""

from __future__ import annotations

import errno
import json
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from mlip_zoo.errors import (CardError, ChecksumMismatchError, DatasetError, MissingExtraError, OutputError,
                             WeightsNotAvailableError)
from mlip_zoo.evaluators.runner import RunOptions, evaluate
from mlip_zoo.leaderboard.results import ResultError, recompute
from mlip_zoo.zoo import load_potential, read_card
from mlip_zoo.zoo.registry import check_family
from mlip_zoo.zoo.weights import resolve_weights

from labels import assert_reproduces_labels

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # fake_calcs, for the `family: ase` cards below
catalogue = pytest.mark.catalogue

FAKE_CARD = """\
key: {key}
name: {key}
version: "1"
family: ase
calculator: "fake_calcs:{cls}"
license: MIT
targets: EFS
elements: [Al, Cu, Ag, Au, Ni, Pd, Pt, H, C, N, O]
"""


def slab(i: int, **info) -> Atoms:
    atoms = fcc111("Cu", (2, 2, 3), vacuum=6.0)
    atoms.set_tags([0 if t > 1 else 1 for t in atoms.get_tags()])
    add_adsorbate(atoms, "O", 1.7, "fcc")
    atoms.set_constraint(FixAtoms(mask=atoms.get_tags() == 0))
    atoms.rattle(0.03, seed=i)
    atoms.info.pop("adsorbate_info", None)  # ase.build's placement notes: not data
    atoms.positions = np.round(atoms.positions, 8)  # what extxyz stores, so labels hold on re-reading
    atoms.cell = np.round(atoms.cell[:], 8)
    atoms.info.update({"sid": f"s{i}", "fid": 0, "split": "id", **info})
    return atoms


def label(atoms: Atoms) -> Atoms:
    ref = atoms.copy()
    try:
        ref.calc = EMT()
        energy, forces = ref.get_potential_energy(), ref.get_forces(apply_constraint=False)
        if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
            raise ValueError("EMT gave no finite label")
    except Exception:  # structures EMT cannot label get placeholder labels
        energy, forces = 0.0, np.zeros((len(atoms), 3))
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def write_set(path: Path, frames: list[Atoms]) -> Path:
    from ase.io import write

    write(path, frames, format="extxyz")
    return path


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """One S2EF evaluation over a set mixing good structures with every class of bad structure."""
    tmp = tmp_path_factory.mktemp("mixed")
    iron = bulk("Fe", "bcc", a=2.87) * 2
    iron.info.update({"sid": "iron", "fid": 0, "split": "id"})
    nan_pos = slab(90)
    nan_pos.positions[3] = np.nan
    nan_pos.info["sid"] = "nan-positions"
    overlap = slab(91)
    overlap.positions[-1] = overlap.positions[-2] + [0.01, 0, 0]
    overlap.info["sid"] = "overlap"
    empty = Atoms(cell=[5, 5, 5], pbc=True, info={"sid": "empty", "fid": 0, "split": "id"})
    flat = Atoms("Cu2", positions=[[0, 0, 0], [1.3, 1.3, 0]], cell=[[2.6, 0, 0], [0, 2.6, 0], [0, 0, 0]], pbc=True,
                 info={"sid": "flat-cell", "fid": 0, "split": "id"})
    frames = [label(slab(i)) for i in range(6)] + [label(a) for a in (iron, nan_pos, overlap, empty, flat)]
    frames += [label(slab(7, explode=True)), label(slab(8, nan_forces=True))]
    data = write_set(tmp / "mixed.extxyz", frames)
    card_dir = tmp / "cards"
    card_dir.mkdir()
    (card_dir / "fragile-emt.yaml").write_text(FAKE_CARD.format(key="fragile-emt", cls="FragileEMT"))
    card = read_card(card_dir / "fragile-emt.yaml")
    record = evaluate(card, "oc20-s2ef", RunOptions(out=tmp / "out", dataset=data, workers=0))
    return record, {f.id: f.reason for f in record.failures}


@catalogue
def test_unsupported_element(mixed_run):
    record, reasons = mixed_run
    assert "UnsupportedElementError" in reasons["iron_0"] and "contains Fe" in reasons["iron_0"]


@catalogue
def test_nan_positions(mixed_run):
    assert "non-finite (NaN or infinite) positions" in mixed_run[1]["nan-positions_0"]


@catalogue
def test_overlapping_atoms(mixed_run):
    assert "overlap (0.010 Å apart)" in mixed_run[1]["overlap_0"]


@catalogue
def test_empty_structure(mixed_run):
    assert "has no atoms" in mixed_run[1]["empty_0"]


@catalogue
def test_zero_volume_cell(mixed_run):
    assert "cell is singular" in mixed_run[1]["flat-cell_0"]


@catalogue
def test_model_raising_mid_batch(mixed_run):
    assert "model blew up mid-batch" in mixed_run[1]["s7_0"]


@catalogue
def test_nan_forces_from_the_model(mixed_run):
    assert "NonFiniteOutputError" in mixed_run[1]["s8_0"] and "non-finite forces" in mixed_run[1]["s8_0"]


def test_every_good_structure_still_scored(mixed_run):
    record, reasons = mixed_run
    assert record.n_structures == 13 and record.n_failed == 7 == len(reasons)
    # extxyz keeps forces to 8 decimals, so the reference carries up to 5e-9 of rounding
    assert record.metrics["energy_mae"] < 1e-9 and record.metrics["forces_mae"] < 1e-8


@catalogue
def test_relaxation_that_explodes_is_stopped_and_recorded(tmp_path):
    import ase.db

    frames = []
    for i in range(3):
        atoms = slab(i)
        atoms.info.update({"y_relaxed": 0.0})
        atoms.new_array("pos_relaxed", atoms.positions.copy())
        frames.append(atoms)
    path = tmp_path / "is2re.json"
    with ase.db.connect(str(path), append=False) as db:
        for a in frames:
            db.write(a, key_value_pairs={k: v for k, v in a.info.items()}, data={"pos_relaxed": a.arrays["pos_relaxed"]})
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "collapsing.yaml").write_text(FAKE_CARD.format(key="collapsing", cls="CollapsingEMT"))
    record = evaluate(read_card(tmp_path / "cards" / "collapsing.yaml"), "oc20-is2re",
                      RunOptions(out=tmp_path / "out", dataset=path, workers=0))
    assert record.n_failed == 3
    assert all("RelaxationExploded" in f.reason for f in record.failures)


@catalogue
def test_malformed_yaml(card_dir):
    with pytest.raises(CardError, match=r"broken.yaml: not valid YAML"):
        read_card(card_dir("broken", "key: broken\nname: [oops\n"))


@catalogue
def test_unknown_card_key(card_dir):
    with pytest.raises(CardError, match=r"weigths: unknown field \(did you mean 'weights'\?\)"):
        read_card(card_dir("typo", "key: typo\nname: T\nversion: '1'\nfamily: emt\nlicense: MIT\ntargets: EF\n"
                                   "weigths: []\n"))


@catalogue
def test_bad_key_pattern(card_dir):
    with pytest.raises(CardError, match=r"key: 'My Model' is not a valid key"):
        read_card(card_dir("My Model", "key: My Model\nname: T\nversion: '1'\nfamily: emt\nlicense: MIT\ntargets: EF\n"))


@catalogue
@pytest.mark.parametrize("filename", ["../outside.pt", "/etc/passwd"])
def test_weights_filename_escaping_the_cache(card_dir, filename):
    with pytest.raises(CardError, match=r"weights.0.filename"):
        read_card(card_dir("esc", "key: esc\nname: T\nversion: '1'\nfamily: emt\nlicense: MIT\ntargets: EF\n"
                                  f"weights:\n  - {{filename: '{filename}', hf_repo: o/m, revision: main}}\n"))


@catalogue
def test_unknown_family():
    with pytest.raises(KeyError, match=r"unknown model family 'sevenet' \(did you mean 'sevenn'\?\)"):
        check_family("sevenet")


@catalogue
def test_missing_optional_extra(card_dir, monkeypatch):
    monkeypatch.setenv("MLIPZOO_CALCULATOR_MODULES", "package_nobody_installed")  # allowed, not installed
    card = read_card(card_dir("needs-pkg", FAKE_CARD.format(key="needs-pkg", cls="X").replace(
        "fake_calcs:X", "package_nobody_installed.calc:Calculator")))
    with pytest.raises(MissingExtraError, match=r"cannot import 'package_nobody_installed.calc'.*install the package"):
        load_potential(card)


@pytest.fixture
def shipped_weights(tmp_path, monkeypatch):
    root = tmp_path / "site"
    (root / "shipsweights").mkdir(parents=True)
    (root / "shipsweights" / "__init__.py").write_text("")
    payload = bytes(range(256)) * 400
    (root / "shipsweights" / "w.pt").write_bytes(payload)
    monkeypatch.syspath_prepend(str(root))
    yield root / "shipsweights" / "w.pt", payload
    sys.modules.pop("shipsweights", None)


def _pkg_card(card_dir, payload):
    import hashlib

    return read_card(card_dir("pkg", "key: pkg\nname: P\nversion: '1'\nfamily: emt\nlicense: MIT\ntargets: EF\n"
                                     f"weights:\n  - filename: w.pt\n    sha256: '{hashlib.sha256(payload).hexdigest()}'\n"
                                     "    mirrors: [{package: shipsweights, path: w.pt}]\n"))


@catalogue
def test_truncated_weights(shipped_weights, card_dir):
    path, payload = shipped_weights
    path.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(WeightsNotAvailableError, match=r"REFUSED: sha256 .* \(reinstall the package\)"):
        resolve_weights(_pkg_card(card_dir, payload))


@catalogue
def test_tampered_weights(fake_hub, card_dir):
    good = b"genuine weights" * 100
    fake_hub.add_file("org/model", "w.pt", b"evil" + good, commit="f" * 40)
    import hashlib

    card = read_card(card_dir("hubm", "key: hubm\nname: H\nversion: '1'\nfamily: emt\nlicense: MIT\ntargets: EF\n"
                                      f"weights:\n  - {{filename: w.pt, hf_repo: org/model, revision: '{'f' * 40}', "
                                      f"sha256: '{hashlib.sha256(good).hexdigest()}'}}\n"))
    with pytest.raises(ChecksumMismatchError, match=r"hubm/w.pt: the bytes served by hub changed: .* quarantined"):
        resolve_weights(card)


@catalogue
def test_weights_not_cached_while_offline(card_dir):
    card = read_card(card_dir("offline-only", "key: offline-only\nname: O\nversion: '1'\nfamily: emt\nlicense: MIT\ntargets: EF\n"
                                     "weights:\n  - {filename: w.pt, hf_repo: org/model, revision: main}\n"))
    with pytest.raises(WeightsNotAvailableError, match=r"(?s)not cached.*network needed.*unset HF_HUB_OFFLINE"):
        resolve_weights(card)


@catalogue
def test_corrupt_extxyz(tmp_path):
    from ase.io import write

    path = tmp_path / "bad.extxyz"
    write(path, [label(slab(0)), label(slab(1))], format="extxyz")
    lines = path.read_text().splitlines()
    lines[len(lines) // 2 + 5] = "Cu not-a-number 1.0"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"bad.extxyz: corrupt extxyz at record 1"):
        evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path / "out", dataset=path, workers=0))


@catalogue
def test_corrupt_aselmdb(tmp_path):
    path = tmp_path / "bad.aselmdb"
    path.write_bytes(b"this is not an lmdb file at all" * 100)
    with pytest.raises(DatasetError, match=r"bad.aselmdb: cannot read as an ASE database"):
        evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path / "out", dataset=path, workers=0))


def _aselmdb(path: Path, n: int = 30) -> Path:
    from ase_db_backends.aselmdb import LMDBDatabase

    db = LMDBDatabase(path)
    for i in range(n):
        db.write(label(slab(i % 3)), sid=f"s{i}", data={"padding": list(range(300))})
    del db
    Path(f"{path}-lock").unlink(missing_ok=True)
    return path


@catalogue
def test_truncated_aselmdb_is_refused_not_a_bus_error(tmp_path):
    path = _aselmdb(tmp_path / "cut.aselmdb")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a download cut short
    with pytest.raises(DatasetError, match=r"cut.aselmdb: truncated LMDB file .*fetch the file again"):
        evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path / "out", dataset=path, workers=0))


@catalogue
def test_aselmdb_is_read_without_writing_beside_it(tmp_path):
    """A dataset on a read-only mount: reading writes no lock file next to it (root ignores
    permissions here, so the test checks the folder stays as it was)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    path = _aselmdb(folder / "set.aselmdb", 6)
    before = sorted(p.name for p in folder.iterdir())
    record = evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path / "out", dataset=path, workers=0))
    assert record.n_structures == 6 and sorted(p.name for p in folder.iterdir()) == before


@catalogue
def test_duplicate_structure_ids(tmp_path):
    frames = [label(slab(0)), label(slab(1))]
    frames[1].info["sid"] = "s0"
    with pytest.raises(DatasetError, match=r"duplicate structure id 's0_0' \(record 1\)"):
        evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path / "o", dataset=write_set(tmp_path / "d.extxyz", frames),
                                                workers=0))


@catalogue
def test_corrupt_parquet_shard_is_detected_and_recomputed(tmp_path):
    opts = RunOptions(out=tmp_path, workers=0, limit=120)
    first = evaluate("emt", "oc20-s2ef", opts)
    shard = sorted(tmp_path.rglob("shard-00000.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:-100] + b"\0" * 100)  # bit rot in a finished shard
    again = evaluate("emt", "oc20-s2ef", opts)
    assert again.metrics == first.metrics and again.n_structures == first.n_structures
    pq.read_table(shard)  # rewritten whole


@catalogue
def test_result_from_a_newer_schema(tmp_path):
    evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path, workers=0, limit=5))
    path = tmp_path / "emt" / "oc20-s2ef.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "schema_version": 7}))
    with pytest.raises(ResultError, match=r"newer mlip-zoo \(result schema 7.*upgrade"):
        recompute(path)


@catalogue
def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")
    with pytest.raises(OutputError, match=r"cannot write .*results.*choose a writable --out"):
        evaluate("emt", "oc20-s2ef", RunOptions(out=blocker, workers=0, limit=5))


@catalogue
@pytest.mark.labels
def test_disk_full_keeps_finished_shards_and_resumes(tmp_path, monkeypatch):
    import mlip_zoo.evaluators.shards as shards

    opts = RunOptions(out=tmp_path, workers=0, limit=120)
    real_write, calls = shards.pq.write_table, {"n": 0}

    def full_after_one(table, where, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr(shards.pq, "write_table", full_after_one)
    with pytest.raises(OutputError, match=r"No space left on device.*finished shards are kept"):
        evaluate("emt", "oc20-s2ef", opts)
    kept = sorted(tmp_path.rglob("shard-*.parquet"))
    assert len(kept) == 1 and not list(tmp_path.rglob("*.tmp"))
    monkeypatch.setattr(shards.pq, "write_table", real_write)
    record = evaluate("emt", "oc20-s2ef", opts)
    assert record.n_structures == 120
    assert_reproduces_labels(record)


@pytest.mark.slow
def test_dask_worker_killed_mid_run(tmp_path, card_dir):
    """A worker process dies (OOM killer, node loss): Dask reruns its shard elsewhere and the
    numbers come out the same."""
    import os
    import signal
    import threading
    import time

    from mlip_zoo.evaluators.runner import Clusters

    card = read_card(card_dir("slow-emt", textwrap.dedent("""\
        key: slow-emt
        name: slow EMT
        version: "1"
        family: ase
        calculator: "fake_calcs:SlowEMT"
        calculator_kwargs: {delay: 0.01}
        license: MIT
        targets: EFS
        """)))
    reference = evaluate(card, "oc20-s2ef", RunOptions(out=tmp_path / "ref", workers=0, limit=200))
    outcome = {}
    opts = RunOptions(out=tmp_path / "killed", workers=2, limit=200)
    with Clusters(opts) as clusters:
        pids = clusters.client().run(os.getpid)
        thread = threading.Thread(target=lambda: outcome.update(record=evaluate(card, "oc20-s2ef", opts,
                                                                                clusters=clusters)))
        thread.start()
        deadline = time.time() + 60
        while time.time() < deadline and not list((tmp_path / "killed").rglob("shard-*.parquet")):
            time.sleep(0.05)
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        thread.join(timeout=300)
    assert outcome["record"].metrics == reference.metrics
    assert outcome["record"].n_structures == 200 and outcome["record"].n_failed == 0
    shutil.rmtree(tmp_path / "killed", ignore_errors=True)


# --- issue #21: a dataset path that is not a dataset file ------------------------------------


@catalogue
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_dataset_that_is_a_fifo_or_device_is_refused_without_reading(tmp_path, kind):
    import os

    if kind == "fifo":
        path = tmp_path / "pipe.extxyz"
        os.mkfifo(path)  # opening it would block until a writer came; reading /dev/zero never ends
    else:
        path = Path("/dev/zero")
    with pytest.raises(DatasetError, match=rf"{path}: not a regular file .*give --dataset a dataset file"):
        evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path / "out", dataset=path, workers=0))


@catalogue
def test_dataset_folder_is_refused_before_hashing(tmp_path, monkeypatch):
    import mlip_zoo.evaluators.data as data

    folder = tmp_path / "lots-of-files"
    folder.mkdir()
    (folder / "a.extxyz").write_text("")

    def no_hashing(path):
        raise AssertionError(f"hashed {path} before checking what it is")

    monkeypatch.setattr(data, "sha256_file", no_hashing)
    with pytest.raises(DatasetError, match=rf"{folder}: a folder, and neither a Matbench Discovery WBM layout nor .*"
                                           r"give --dataset one dataset file instead"):
        evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path / "out", dataset=folder, workers=0))


@catalogue
def test_unknown_dataset_format_is_refused_before_hashing(tmp_path, monkeypatch):
    import mlip_zoo.evaluators.data as data

    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    monkeypatch.setattr(data, "sha256_file", lambda p: (_ for _ in ()).throw(AssertionError("hashed")))
    with pytest.raises(DatasetError, match=r"data.csv: unknown dataset format; use extxyz"):
        evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path / "out", dataset=path, workers=0))


@catalogue
@pytest.mark.parametrize("suffix", [".gz", ".xz"])
@pytest.mark.parametrize("payload, message", [
    (b" " * (6 << 20), r"a line longer than 4 MiB \(no newline\); not a text data file"),  # ase held it as one string
    (b"1\n\nH 0 0 0\n" * 100_000,
     r"decompresses to more than 0.25 MiB \(50x its size\): refused as a likely decompression bomb"),
], ids=["one-line", "tiny-frames"])
def test_decompression_bomb_is_refused_while_streaming(tmp_path, monkeypatch, payload, message, suffix):
    import gzip
    import lzma

    import mlip_zoo.evaluators.data as data

    monkeypatch.setattr(data, "PACKED_FLOOR", 1 << 18)  # the real floor (32 MiB) takes longer to reach
    path = tmp_path / f"bomb.extxyz{suffix}"
    path.write_bytes(gzip.compress(payload, compresslevel=9) if suffix == ".gz" else lzma.compress(payload))
    assert path.stat().st_size * 50 < len(payload)
    with pytest.raises(DatasetError, match=rf"bomb.extxyz{suffix}: {message}"):
        for _ in data.iter_records(path):  # streamed: memory holds a line and a record, never the stream
            pass


def test_gzipped_extxyz_still_reads(tmp_path):
    import gzip

    plain = write_set(tmp_path / "d.extxyz", [label(slab(0)), label(slab(1))])
    zipped = tmp_path / "d.extxyz.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    record = evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path / "out", dataset=zipped, workers=0))
    assert record.n_structures == 2 and record.n_failed == 0


@catalogue
@pytest.mark.parametrize("command", [["eval", "emt", "oc20-s2ef"], ["run"]])
def test_negative_workers_is_a_usage_error(tmp_path, command):
    from typer.testing import CliRunner

    from mlip_zoo.cli import app

    result = CliRunner().invoke(app, [*command, "--workers", "-1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "Invalid value for '--workers'" in result.output and "greater than or equal to 0" in result.output
    assert not (tmp_path / "out").exists()


@catalogue
def test_negative_workers_through_the_api(tmp_path):
    from mlip_zoo.errors import ConfigError

    with pytest.raises(ConfigError, match=r"workers \(--workers\) must be 0 \(run in this process\) or a number .* not -1"):
        evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path / "out", workers=-1))
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def small_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("small-result")
    evaluate("emt", "oc20-s2ef", RunOptions(out=out, workers=0, limit=5))
    return out / "emt" / "oc20-s2ef.json"


@catalogue
@pytest.mark.parametrize("version", [7, 7.0, 99])
def test_result_from_a_newer_schema_through_validate(small_result, tmp_path, version):
    """Never "predates": the message names the file, says a newer mlip-zoo wrote it, and how to upgrade."""
    from typer.testing import CliRunner

    from mlip_zoo.cli import app

    folder = tmp_path / "emt"
    shutil.copytree(small_result.parent, folder)
    path = folder / "oc20-s2ef.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema_version": version}))
    result = CliRunner().invoke(app, ["validate", str(path), "--json"])
    assert result.exit_code == 1
    (entry,) = json.loads(result.stdout)
    assert entry["error"].startswith(f"{path}: written by a newer mlip-zoo (result schema {version}; this one reads up to")
    assert "upgrade mlip-zoo" in entry["error"] and "predates" not in entry["error"]


@catalogue
@pytest.mark.parametrize("version", ["3", None, True])
def test_result_schema_version_not_an_integer(small_result, tmp_path, version):
    path = tmp_path / "oc20-s2ef.json"
    path.write_text(json.dumps({**json.loads(small_result.read_text()), "schema_version": version}))
    with pytest.raises(ResultError, match=rf"oc20-s2ef.json: schema_version must be an integer .*got {version!r}"):
        recompute(path)


@catalogue
@pytest.mark.parametrize("name", ["model.pkl", "weights.pt", "notes.txt"])
def test_validate_refuses_a_file_that_is_neither_card_nor_result(tmp_path, monkeypatch, name):
    import pickle

    from typer.testing import CliRunner

    from mlip_zoo.cli import app

    path = tmp_path / name
    path.write_bytes(pickle.dumps({"x": 1}))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    result = CliRunner().invoke(app, ["validate", str(path), "--json"])
    assert result.exit_code == 1
    (entry,) = json.loads(result.stdout)
    assert entry["error"] == (f"{path}: not a model card (*.yaml) or a result file (*.json); validate checks only "
                              "those (or folders of them), and does not open any other file")


@catalogue
def test_validate_a_fifo_named_like_a_result(tmp_path):
    import os

    from typer.testing import CliRunner

    from mlip_zoo.cli import app

    path = tmp_path / "oc20-s2ef.json"
    os.mkfifo(path)
    result = CliRunner().invoke(app, ["validate", str(path), "--json"])
    assert result.exit_code == 1 and "no such file (or not a regular file)" in json.loads(result.stdout)[0]["error"]


@catalogue
@pytest.mark.parametrize("where", ["whole-file", "inside-metrics"])
def test_deeply_nested_result_json(small_result, tmp_path, where):
    path = tmp_path / "oc20-s2ef.json"
    if where == "whole-file":  # json itself recurses per level: RecursionError
        path.write_text("[" * 200_000 + "]" * 200_000)
        message = r"JSON nested too deeply to be a result file"
    else:  # parses, but whatever walks the metrics would recurse as deep
        nested = 0.1
        for _ in range(900):
            nested = {"x": nested}
        path.write_text(json.dumps({**json.loads(small_result.read_text()), "metrics": nested}))
        message = r"JSON nested more than 32 levels deep, too deep to be a result file"
    with pytest.raises(ResultError, match=rf"oc20-s2ef.json: {message}; it was not written by mlip-zoo"):
        recompute(path)


@catalogue
def test_non_finite_reference_labels_are_failed_structures(tmp_path):
    """A NaN or infinite label in the dataset fails that structure, with its reason; the others are
    scored, the result is written, and validation re-derives the same failures."""
    from mlip_zoo.leaderboard.results import validate_result

    frames = [label(slab(i)) for i in range(4)]
    frames[1].calc.results["energy"] = float("nan")
    frames[2].calc.results["forces"][5, 1] = float("inf")
    data = write_set(tmp_path / "labels.extxyz", frames)
    record = evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path / "out", dataset=data, workers=0))
    reasons = {f.id: f.reason for f in record.failures}
    assert reasons == {"s1_0": "reference energy is NaN (fix or drop this record of the dataset)",
                       "s2_0": "reference forces hold infinite values (fix or drop this record of the dataset)"}
    assert record.n_structures == 4 and record.n_failed == 2
    assert record.metrics["energy_mae"] < 1e-9 and record.metrics["forces_mae"] < 1e-8
    checked = validate_result(tmp_path / "out" / "emt" / "oc20-s2ef.json", datasets=[data])
    assert checked.comparison.ok


@catalogue
def test_two_evals_writing_the_same_out(tmp_path):
    """The second evaluation into the same OUT/<model>/<task> is refused, naming the lock's holder
    and what to do; the first one's files are untouched, and once it ends the lock is gone."""
    import os

    from mlip_zoo.evaluators.store import output_lock

    with output_lock(tmp_path / "emt", "oc20-s2ef") as lock:
        assert lock.read_text().startswith(f"pid {os.getpid()} on ")
        with pytest.raises(OutputError, match=rf"\.oc20-s2ef\.lock: another evaluation of emt on oc20-s2ef is writing to "
                                              rf"{tmp_path} \(pid {os.getpid()} on .*\); wait for it to finish \(or stop "
                                              r"it\), or choose another --out"):
            evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path, workers=0, limit=5))
        assert not (tmp_path / "emt" / "oc20-s2ef.json").exists()
    assert not lock.exists()
    record = evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path, workers=0, limit=5))
    assert record.n_structures == 5 and not lock.exists()


def test_output_lock_is_per_task(tmp_path):
    from mlip_zoo.evaluators.store import output_lock

    with output_lock(tmp_path / "emt", "oc20-s2ef"), output_lock(tmp_path / "emt", "oc20-is2re"):
        pass


def test_output_lock_held_by_another_process(tmp_path):
    """The lock holds across processes (a second `mlipzoo eval` in another shell), and a holder
    that dies releases it."""
    import subprocess

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from mlip_zoo.evaluators.store import output_lock\n"
                               f"with output_lock(Path({str(tmp_path / 'emt')!r}), 'oc20-s2ef'):\n"
                               "    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=rf"is writing to {tmp_path} \(pid {holder.pid} on "):
            evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path, workers=0, limit=5))
    finally:
        holder.kill()  # dies holding it: the kernel releases an flock with its holder
        holder.wait()
    assert evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path, workers=0, limit=5)).n_structures == 5
