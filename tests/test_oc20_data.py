"""OC20's data as published (issue #17): the raw S2EF layout read without conversion, the legacy
IS2RE LMDB's energy kind, and `mlipzoo data fetch oc20` end to end against a loopback mirror
(download, resume after a cut, checksums, safe unpacking, then `mlipzoo eval` on the result)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import lzma
import tarfile
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.io import write
from typer.testing import CliRunner

from mlip_zoo.cli import app
from mlip_zoo.errors import DatasetError, DownloadChecksumError, DownloadError
from mlip_zoo.evaluators.data import dataset_format, datasets_dir, iter_records, record_id
from mlip_zoo.evaluators.oc20 import fetch as oc20_fetch
from mlip_zoo.evaluators.oc20.make_mini import build_system, load_adsorbates
from mlip_zoo.zoo.download import download


def _frames(n: int):
    """OC20-like labelled frames (tags, FixAtoms on tag 0), EMT energy and forces."""
    from ase.calculators.singlepoint import SinglePointCalculator

    ads = load_adsorbates()
    key = sorted(k for k, v in ads.items() if len(v[0]) <= 2)[0]
    out = []
    for i in range(n):
        atoms = build_system("Cu", ads[key], np.random.default_rng(i))
        calc = atoms.copy()
        calc.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=calc.get_potential_energy(),
                                           forces=calc.get_forces(apply_constraint=False))
        out.append(atoms)
    return out


def _write_pair(folder: Path, stem: str, frames, lines: list[str], *, xz: bool) -> None:
    """As ASE (and so OC20) writes them: 8 decimals per atom column."""
    folder.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    write(text, frames, format="extxyz")
    for name, data in ((f"{stem}.extxyz", text.getvalue()), (f"{stem}.txt", "".join(f"{line}\n" for line in lines))):
        if xz:
            (folder / f"{name}.xz").write_bytes(lzma.compress(data.encode()))
        else:
            (folder / name).write_text(data)


def test_raw_s2ef_records_carry_oc20_fields(tmp_path):
    frames = _frames(3)
    folder = tmp_path / "s2ef_val_ood_cat"  # the split comes from the folder's name
    _write_pair(folder, "0", frames[:2], ["random17,frame0,-3.5", "random17,frame4,-3.5"], xz=True)
    _write_pair(folder, "1", frames[2:], ["random2181546,frame12,1.25"], xz=False)
    assert dataset_format(folder) == "oc20-s2ef-raw"
    records = list(iter_records(folder))
    assert [record_id(a, i) for i, a in enumerate(records)] == ["17_0", "17_4", "2181546_12"]
    for atoms, frame, ref in zip(records, frames, (-3.5, -3.5, 1.25), strict=True):
        assert atoms.info["energy_kind"] == "total" and atoms.info["reference_energy"] == ref
        assert atoms.info["split"] == "ood_cat"
        assert atoms.calc.results["energy"] == pytest.approx(frame.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(atoms.calc.results["forces"], frame.calc.results["forces"], atol=5e-9)
        np.testing.assert_array_equal(atoms.get_tags(), frame.get_tags())
        assert atoms.constraints[0].get_indices().tolist() == np.flatnonzero(frame.get_tags() == 0).tolist()


def test_manifest_names_each_files_split_and_numeric_stems_read_in_order(tmp_path):
    frames = _frames(3)
    for i, stem in enumerate(("10", "2", "a")):
        _write_pair(tmp_path, stem, frames[i:i + 1], [f"random{i},frame0,0.0"], xz=False)
    (tmp_path / "manifest.json").write_text(json.dumps({"split": "id", "splits": {"10": "ood_both"}}))
    got = [(a.info["sid"], a.info["split"]) for a in iter_records(tmp_path)]
    assert got == [(1, "id"), (0, "ood_both"), (2, "id")]


@pytest.mark.parametrize("n_lines, message", [
    (1, r"0.extxyz.xz has 2 frames but .*0.txt.xz has 1 lines"),
    (3, r"0.extxyz.xz has 2 frames but .*0.txt.xz has 3 lines"),
])
def test_line_count_mismatch_names_both_files_and_counts(tmp_path, n_lines, message):
    lines = [f"random1,frame{i},0.5" for i in range(n_lines)]
    _write_pair(tmp_path / "s2ef", "0", _frames(2), lines, xz=True)
    with pytest.raises(DatasetError, match=message):
        list(iter_records(tmp_path / "s2ef"))


def test_bad_txt_line_and_lonely_file_are_named(tmp_path):
    _write_pair(tmp_path / "a", "0", _frames(1), ["sid1,frame0,0.5"], xz=False)
    with pytest.raises(DatasetError, match=r"0.txt:1: expected 'random<sid>,frame<fid>,<reference energy>'"):
        list(iter_records(tmp_path / "a"))
    _write_pair(tmp_path / "b", "0", _frames(1), ["random1,frame0,0.5"], xz=False)
    write(tmp_path / "b" / "1.extxyz", _frames(1), format="extxyz")
    with pytest.raises(DatasetError, match=r"1.extxyz: no 1.txt\[.xz\] beside it"):
        list(iter_records(tmp_path / "b"))


def test_embedded_oc20_mini_is_in_the_raw_layout_with_references():
    folder = datasets_dir() / "oc20-mini"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert dataset_format(folder / "s2ef") == "oc20-s2ef-raw" and manifest["energy_kind"] == "total"
    records = list(iter_records(folder / "s2ef"))
    assert len(records) == manifest["files"]["s2ef"]["n"]
    assert {a.info["split"] for a in records} == {"id", "ood_ads", "ood_cat", "ood_both"}
    refs = manifest["reference_energy"]
    for atoms in records[::25]:  # E_slab of its metal + the adsorbate's gas references
        metal = atoms.get_chemical_symbols()[0]
        ads = np.asarray(atoms.get_chemical_symbols())[atoms.get_tags() == 2]
        expected = refs["slab_energies"][metal] + sum(refs["gas_references"][el] for el in ads)
        assert atoms.info["reference_energy"] == pytest.approx(expected, abs=1e-9)
    for atoms in iter_records(folder / "is2re.json"):
        assert atoms.info["energy_kind"] == "total" and np.isfinite(atoms.info["reference_energy"])


def test_legacy_is2re_lmdb_holds_adsorption_energies_and_its_folder_names_the_split(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    torch = pytest.importorskip("torch")
    pyg = pytest.importorskip("torch_geometric.data")
    import pickle

    atoms = _frames(1)[0]
    path = tmp_path / "is2re" / "all" / "val_ood_ads" / "data.lmdb"
    path.parent.mkdir(parents=True)
    env = lmdb.open(str(path), subdir=False, map_size=1 << 24)
    with env.begin(write=True) as txn:
        data = pyg.Data(pos=torch.tensor(atoms.positions), cell=torch.tensor(atoms.cell[:]).view(1, 3, 3),
                        atomic_numbers=torch.tensor(atoms.numbers, dtype=torch.float), natoms=len(atoms),
                        tags=torch.tensor(atoms.get_tags()), sid=7, y_init=1.5, y_relaxed=-0.25,
                        pos_relaxed=torch.tensor(atoms.positions))
        txn.put(b"0", pickle.dumps(data))
    env.close()
    (record,) = iter_records(path.parent, trust_pickle=True)
    assert record.info["energy_kind"] == "adsorption" and record.info["y_relaxed"] == -0.25
    assert record.info["split"] == "ood_ads" and record_id(record, 0) == "7"


# ---- download ----------------------------------------------------------------------------------

@pytest.fixture
def file_server(monkeypatch):
    from hub_server import FileServer

    server = FileServer()
    server.start()
    yield server
    server.stop()


def test_download_pins_a_sha256_on_first_use_and_refuses_a_changed_file(file_server, tmp_path):
    file_server.files["/f.bin"] = b"first" * 1000
    lock = tmp_path / "downloads.lock"
    got = download(file_server.url + "/f.bin", tmp_path / "a" / "f.bin", lock=lock, key="f.bin")
    assert got["pinned"] and json.loads(lock.read_text())["f.bin"]["sha256"] == got["sha256"]
    file_server.files["/f.bin"] = b"other" * 1000
    with pytest.raises(DownloadChecksumError) as info:
        download(file_server.url + "/f.bin", tmp_path / "b" / "f.bin", lock=lock, key="f.bin")
    changed = hashlib.sha256(b"other" * 1000).hexdigest()
    assert f"sha256 {changed} differs from the one its first download pinned in {lock} {got['sha256']}" in str(info.value)
    assert not (tmp_path / "b" / "f.bin").exists() and not (tmp_path / "b" / "f.bin.part").exists()
    with pytest.raises(DownloadError, match="cannot download http://127.0.0.1:9/f.bin"):
        download("http://127.0.0.1:9/f.bin", tmp_path / "c" / "f.bin", timeout=2)


def _tarball(frames_folder: Path, name: str = "s2ef_val_id", extra: tarfile.TarInfo | None = None) -> bytes:
    """A tarball in the published layout: <name>/<name>/N.extxyz.xz + N.txt.xz."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(frames_folder.iterdir()):
            if path.name != "manifest.json":
                tar.add(path, arcname=f"{name}/{name}/{path.name}")
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size))
    return buffer.getvalue()


def _cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result


def test_fetch_oc20_resumes_verifies_refuses_tampering_and_evaluates(file_server, tmp_path, monkeypatch):
    # The embedded id split's pair (EMT labels at full precision), packed as OC20 packs val_id.
    mini = datasets_dir() / "oc20-mini" / "s2ef"
    only_id = tmp_path / "id"
    only_id.mkdir()
    for name in ("0.extxyz.xz", "0.txt.xz"):
        (only_id / name).write_bytes((mini / name).read_bytes())
    tarball = _tarball(only_id)
    monkeypatch.setitem(oc20_fetch.ARCHIVES, "val_id", dataclasses.replace(
        oc20_fetch.ARCHIVES["val_id"], md5=hashlib.md5(tarball).hexdigest()))  # ours stands in for the real one
    file_server.files["/mirror/s2ef_val_id.tar"] = tarball
    data, mirror = tmp_path / "data", file_server.url + "/mirror/"

    # A transfer cut after 10 kB: an error that says so, and the partial file kept.
    file_server.cut_next = 10_000
    code, result = _cli("data", "fetch", "oc20", "--split", "val_id", "--mirror", mirror, "--dir", str(data))
    assert code == 1 and "stopped after 10000 of" in result.stderr and "run the same command again" in result.stderr
    assert (data / "oc20" / "s2ef_val_id.tar.part").stat().st_size == 10_000

    # Again: it asks for the rest only, checks the md5, pins the sha256, unpacks.
    code, result = _cli("data", "fetch", "oc20", "--split", "val_id", "--mirror", mirror, "--dir", str(data), "--json")
    assert code == 0, result.output
    report = json.loads(result.stdout)
    assert file_server.ranges[-1] == "bytes=10000-" and report["status"] == "resumed"
    assert report["sha256"] == hashlib.sha256(tarball).hexdigest() and report["pinned"]
    assert json.loads((data / "oc20" / "downloads.lock").read_text())["s2ef_val_id.tar"]["sha256"] == report["sha256"]
    (folder,) = report["datasets"]
    assert folder == str(data / "oc20" / "s2ef_val_id" / "s2ef_val_id") and report["archive"] is None
    code, result = _cli("data", "fetch", "oc20", "--split", "val_id", "--mirror", mirror, "--dir", str(data), "--json")
    assert code == 0 and json.loads(result.stdout)["status"] == "present"

    # What was fetched is evaluated as it is.
    code, result = _cli("eval", "emt", "oc20-s2ef", "--dataset", folder, "--out", str(tmp_path / "out"),
                        "--workers", "0", "--wandb", "disabled", "--json")
    assert code == 0, result.output
    saved = json.loads((tmp_path / "out" / "emt" / "oc20-s2ef.json").read_text())
    assert saved["n_failed"] == 0 and saved["n_structures"] == len(list(iter_records(Path(folder))))
    assert saved["metrics"]["energy_mae"] < 1e-9 and saved["metrics"]["forces_mae"] < 1e-9
    assert set(saved["metrics"]["splits"]) >= {"id"} and saved["metrics"]["splits"]["id"]["n"] == saved["n_structures"]

    # A tampered copy: refused, naming the published md5 and the one it got; nothing kept.
    tampered = bytearray(tarball)
    tampered[-2000] ^= 1
    file_server.files["/mirror/s2ef_val_id.tar"] = bytes(tampered)
    other = tmp_path / "other"
    code, result = _cli("data", "fetch", "oc20", "--split", "val_id", "--mirror", mirror, "--dir", str(other))
    published, got = hashlib.md5(tarball).hexdigest(), hashlib.md5(bytes(tampered)).hexdigest()
    assert code == 1 and f"md5 {got} differs from the published {published}" in result.stderr
    assert not list((other / "oc20").glob("s2ef_val_id*"))


def test_fetch_oc20_refuses_an_archive_member_outside_its_folder(file_server, tmp_path, monkeypatch):
    (tmp_path / "pair").mkdir()
    _write_pair(tmp_path / "pair", "0", _frames(1), ["random1,frame0,0.5"], xz=True)
    evil = tarfile.TarInfo("../../escaped.txt")
    evil.size = 4
    tarball = _tarball(tmp_path / "pair", extra=evil)
    monkeypatch.setitem(oc20_fetch.ARCHIVES, "val_id", dataclasses.replace(
        oc20_fetch.ARCHIVES["val_id"], md5=hashlib.md5(tarball).hexdigest()))
    file_server.files["/s2ef_val_id.tar"] = tarball
    with pytest.raises(DatasetError, match=r"s2ef_val_id.tar: cannot unpack .*outside the destination"):
        oc20_fetch.fetch("val_id", tmp_path / "data", mirror=file_server.url)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "data" / "oc20" / "s2ef_val_id").exists()


def test_fetch_oc20_unreachable_prints_every_url_and_target(tmp_path):
    code, result = _cli("data", "fetch", "oc20", "--split", "val_ood_ads", "--mirror", "http://127.0.0.1:9",
                        "--dir", str(tmp_path))
    assert code == 1 and "cannot download http://127.0.0.1:9/s2ef_val_ood_ads.tar" in result.stderr
    for archive in oc20_fetch.ARCHIVES.values():
        assert f"http://127.0.0.1:9/{archive.filename} -> {tmp_path / 'oc20' / archive.filename}" in result.stderr
    code, result = _cli("data", "fetch", "oc20")
    assert code == 2 and "oc20 needs --split, one of val_id, val_ood_ads" in result.stderr


def test_fetch_oc20_uses_a_tarball_copied_in_by_hand_once_checked(tmp_path, monkeypatch):
    (tmp_path / "pair").mkdir()
    _write_pair(tmp_path / "pair", "0", _frames(1), ["random1,frame0,0.5"], xz=True)
    tarball = _tarball(tmp_path / "pair", name="s2ef_val_ood_both")
    monkeypatch.setitem(oc20_fetch.ARCHIVES, "val_ood_both", dataclasses.replace(
        oc20_fetch.ARCHIVES["val_ood_both"], md5=hashlib.md5(tarball).hexdigest()))
    (tmp_path / "oc20").mkdir()
    (tmp_path / "oc20" / "s2ef_val_ood_both.tar").write_bytes(tarball)  # no network: the copy is used
    heard = []
    report = oc20_fetch.fetch("val_ood_both", tmp_path, mirror="http://127.0.0.1:9", timeout=2,
                              on_unpack=lambda done, total: heard.append((done, total)))
    assert report["status"] == "local" and report["pinned"]
    # the unpacking reports its progress in archive bytes, member by member, to the end
    assert len(heard) >= 3 and heard[-1] == (len(tarball), len(tarball))
    assert [d for d, _ in heard] == sorted(d for d, _ in heard)
    (record,) = iter_records(Path(report["datasets"][0]))
    assert record.info["split"] == "ood_both" and record_id(record, 0) == "1_0"
