"""Weight resolution through the real huggingface_hub client against a loopback Hub, the package
mirror, the lock file and quarantine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import sha256

from mlip_zoo.errors import ChecksumMismatchError, UntrustedCheckpointError, WeightsNotAvailableError
from mlip_zoo.zoo.card import get_card, read_card
from mlip_zoo.zoo.checkpoints import assert_safe_checkpoint
from mlip_zoo.zoo.weights import resolve_weights

COMMIT = "a" * 40
PAYLOAD = b"pretend weights \x00\x01\x02" * 1000

HUB_CARD = """\
key: hub-model
name: Hub model
version: "1"
family: emt
license: MIT
targets: EFS
weights:
  - filename: {filename}
    hf_repo: {repo}
    revision: {revision}
{sha_line}"""


def hub_card(card_dir, *, repo="org/model", revision=COMMIT, filename="ckpt/model.pt", sha=None):
    sha_line = f"    sha256: {sha}\n" if sha else ""
    path = card_dir("hub-model", HUB_CARD.format(repo=repo, revision=revision, filename=filename, sha_line=sha_line))
    return read_card(path)


def test_pinned_revision_download_then_cache_with_server_down(fake_hub, card_dir, monkeypatch):
    fake_hub.add_file("org/model", "ckpt/model.pt", PAYLOAD, commit=COMMIT)
    fake_hub.add_file("org/model", "ckpt/model.pt", b"a newer file on main", commit="b" * 40)
    card = hub_card(card_dir, sha=sha256(PAYLOAD))

    first = resolve_weights(card)["ckpt/model.pt"]
    assert first.source == "hub"
    assert first.path.read_bytes() == PAYLOAD  # the pinned commit, not main's newer file
    assert f"/snapshots/{COMMIT}/" in str(first.path)
    assert any(path.startswith(f"/org/model/resolve/{COMMIT}/ckpt/model.pt") for _, path in fake_hub.requests)

    fake_hub.stop()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    second = resolve_weights(card)["ckpt/model.pt"]
    assert second.source == "hub-cache"
    assert second.path == first.path


def test_cache_is_used_even_when_online_but_server_is_gone(fake_hub, card_dir):
    fake_hub.add_file("org/model", "ckpt/model.pt", PAYLOAD, commit=COMMIT)
    card = hub_card(card_dir, sha=sha256(PAYLOAD))
    resolve_weights(card)
    fake_hub.stop()
    assert resolve_weights(card)["ckpt/model.pt"].source == "hub-cache"


@pytest.mark.parametrize(
    ("repo", "revision", "filename", "expected"),
    [
        ("org/missing", COMMIT, "ckpt/model.pt", r"repository org/missing not found"),
        ("org/model", "c" * 40, "ckpt/model.pt", r"revision c{40} not found in org/model"),
        ("org/model", COMMIT, "ckpt/other.pt", r"no file ckpt/other.pt in org/model at revision a{40} \(404\)"),
    ],
    ids=["repo", "revision", "file"],
)
def test_404_names_repo_revision_and_file(fake_hub, card_dir, repo, revision, filename, expected):
    fake_hub.add_file("org/model", "ckpt/model.pt", PAYLOAD, commit=COMMIT)
    card = hub_card(card_dir, repo=repo, revision=revision, filename=filename, sha=sha256(PAYLOAD))
    with pytest.raises(WeightsNotAvailableError, match=expected) as info:
        resolve_weights(card)
    assert "hub-model" in str(info.value)


def test_tampered_download_is_refused_and_quarantined(fake_hub, card_dir, tmp_path):
    fake_hub.add_file("org/model", "ckpt/model.pt", b"TAMPERED" + PAYLOAD, commit=COMMIT)
    card = hub_card(card_dir, sha=sha256(PAYLOAD))
    with pytest.raises(ChecksumMismatchError, match="quarantined") as info:
        resolve_weights(card)
    assert sha256(PAYLOAD) in str(info.value)
    quarantined = list((tmp_path / "mlipzoo-cache" / "quarantine").glob("*"))
    assert any(p.read_bytes().startswith(b"TAMPERED") for p in quarantined if not p.name.endswith(".reason"))
    # Nothing with the bad bytes is left where the Hub cache would serve it again.
    cached = [p for p in (tmp_path / "hf-cache").rglob("model.pt")]
    assert all(not p.exists() for p in cached)


def test_tampered_cache_is_quarantined_then_redownloaded(fake_hub, card_dir):
    fake_hub.add_file("org/model", "ckpt/model.pt", PAYLOAD, commit=COMMIT)
    card = hub_card(card_dir, sha=sha256(PAYLOAD))
    path = resolve_weights(card)["ckpt/model.pt"].path
    path.resolve().write_bytes(b"corrupted on disk")
    again = resolve_weights(card)["ckpt/model.pt"]
    assert again.source == "hub"
    assert again.path.read_bytes() == PAYLOAD


def test_first_download_pins_sha256_and_commit_in_lock(fake_hub, card_dir):
    fake_hub.add_file("org/model", "ckpt/model.pt", PAYLOAD, commit=COMMIT)
    card = hub_card(card_dir, revision="main")  # no sha256 in the card: the lock pins it
    resolve_weights(card)
    lock = json.loads((card_dir.dir / "weights.lock").read_text())
    assert lock == {"hub-model": {"ckpt/model.pt": {"sha256": sha256(PAYLOAD), "revision": COMMIT}}}

    # Upstream moves main to different bytes: the lock keeps us on the pinned commit.
    fake_hub.add_file("org/model", "ckpt/model.pt", b"silently replaced", commit="d" * 40)
    assert resolve_weights(card)["ckpt/model.pt"].path.read_bytes() == PAYLOAD

    # A file that differs from the pinned hash is refused even at the pinned commit.
    fake_hub.repos["org/model"][COMMIT]["ckpt/model.pt"] = b"rewritten history"
    for p in list(card_dir.dir.parent.joinpath("hf-cache").rglob("*")):
        if p.is_file() or p.is_symlink():
            p.unlink()
    with pytest.raises(ChecksumMismatchError, match=sha256(PAYLOAD)):
        resolve_weights(card)


URL_CARD = """\
key: url-model
name: URL-only model
version: "1"
family: emt
license: MIT
targets: EFS
weights:
  - filename: model.ckpt
    mirrors: [{{url: "{url}"}}]
"""


@pytest.fixture
def file_server(monkeypatch):
    from hub_server import FileServer

    server = FileServer()
    server.start()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    yield server
    server.stop()


def _fetch(card_dir, *extra):
    from typer.testing import CliRunner

    from mlip_zoo.cli import app

    result = CliRunner().invoke(app, ["models", "fetch", "url-model", "--json", *extra],
                                env={"MLIPZOO_CARDS": str(card_dir.dir)})
    return result.exit_code, (json.loads(result.stdout) if result.stdout.strip() else None), result


def test_url_source_without_sha256_is_pinned_on_first_fetch_then_verified_then_refused_when_changed(
        file_server, card_dir, tmp_path, monkeypatch):
    """Trust on first use for a URL published without a checksum (a release asset, an S3 object)."""
    import datetime as dt

    file_server.files["/models/model.ckpt"] = PAYLOAD
    url = file_server.url + "/models/model.ckpt"
    card_dir("url-model", URL_CARD.format(url=url))
    lock_file = card_dir.dir / "weights.lock"

    # First fetch: downloaded, hashed, pinned with the URL and the date, and the user is told.
    code, (row,), _ = _fetch(card_dir)
    assert code == 0 and row["ok"], row
    (first,) = row["files"]
    assert first["source"] == "url" and first["sha256"] == sha256(PAYLOAD)
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    assert json.loads(lock_file.read_text()) == {
        "url-model": {"model.ckpt": {"sha256": sha256(PAYLOAD), "url": url, "pinned": today}}}
    assert f"sha256: {sha256(PAYLOAD)}" in first["pinned"] and str(card_dir.dir / "url-model.yaml") in first["pinned"]
    assert len(file_server.requests) == 1

    # Second fetch: the cached copy, verified against the pin; nothing downloaded, nothing re-pinned.
    code, (row,), _ = _fetch(card_dir)
    assert code == 0 and row["files"][0]["source"] == "url-cache" and row["files"][0]["pinned"] is None
    assert len(file_server.requests) == 1
    locked = lock_file.read_bytes()

    # Upstream swaps the bytes. Where the verified copy is cached, it keeps being used, untouched.
    file_server.files["/models/model.ckpt"] = b"swapped upstream " + PAYLOAD
    cached = Path(first["path"])
    code, (row,), _ = _fetch(card_dir)
    assert code == 0 and row["files"][0]["source"] == "url-cache" and cached.read_bytes() == PAYLOAD

    # On a machine without that copy (the lock committed, a fresh cache) the new bytes are refused,
    # naming both hashes, and quarantined; the pin is not moved.
    monkeypatch.setenv("MLIPZOO_CACHE", str(tmp_path / "another-machine"))
    code, (row,), _ = _fetch(card_dir)
    assert code == 1 and not row["ok"]
    new_sha = sha256(b"swapped upstream " + PAYLOAD)
    assert sha256(PAYLOAD) in row["error"] and new_sha in row["error"] and url in row["error"]
    assert "quarantined" in row["error"] and str(lock_file) in row["error"]
    quarantined = [p for p in (tmp_path / "another-machine" / "quarantine").iterdir() if not p.name.endswith(".reason")]
    assert [p.read_bytes() for p in quarantined] == [b"swapped upstream " + PAYLOAD]
    assert not (tmp_path / "another-machine" / "url" / "url-model" / "model.ckpt").exists()
    assert lock_file.read_bytes() == locked

    # Loading goes through the same resolution, so it refuses as well.
    from mlip_zoo.zoo.registry import load_potential

    with pytest.raises(ChecksumMismatchError, match=new_sha):
        load_potential(read_card(card_dir.dir / "url-model.yaml"))

    # Once the card carries the sha256 (as the first fetch said to do), the card decides.
    card_dir("url-model", URL_CARD.format(url=url).replace(
        "    mirrors:", f"    sha256: {sha256(PAYLOAD)}\n    mirrors:"))
    monkeypatch.setenv("MLIPZOO_CACHE", str(tmp_path / "mlipzoo-cache"))
    code, (row,), _ = _fetch(card_dir)
    assert code == 0 and row["files"][0]["sha256"] == sha256(PAYLOAD)


def test_url_pin_removed_on_purpose_repins_the_new_file(file_server, card_dir):
    """The documented way to accept a replaced upstream file: review it, delete its lock entry."""
    file_server.files["/m.ckpt"] = PAYLOAD
    card_dir("url-model", URL_CARD.format(url=file_server.url + "/m.ckpt"))
    assert _fetch(card_dir)[0] == 0
    file_server.files["/m.ckpt"] = b"version 2"
    (card_dir.dir / "weights.lock").write_text("{}\n")
    code, (row,), _ = _fetch(card_dir)
    assert code == 0 and row["files"][0]["source"] == "url" and row["files"][0]["sha256"] == sha256(b"version 2")
    assert Path(row["files"][0]["path"]).read_bytes() == b"version 2"


def test_offline_and_not_cached_says_network_needed(card_dir):
    card = hub_card(card_dir, sha="e" * 64)
    with pytest.raises(WeightsNotAvailableError) as info:
        resolve_weights(card)
    message = str(info.value)
    assert "not cached" in message and "network needed" in message
    assert "unset HF_HUB_OFFLINE" in message and "mlipzoo models fetch hub-model" in message


def test_hub_only_card_in_the_zoo_fails_clearly_offline():
    with pytest.raises(WeightsNotAvailableError, match=r"mace-mp-0b3-medium.*network needed"):
        resolve_weights(get_card("mace-mp-0b3-medium"))
    with pytest.raises(WeightsNotAvailableError, match="no public weights"):
        resolve_weights(get_card("tdn"))


@pytest.mark.parametrize("key", ["mace-mpa-0-medium", "orb-v3-conservative-inf-mpa", "mattersim-v1-1m",
                                 "mattersim-v1-5m"])
def test_url_only_cards_in_the_zoo_are_real_cards_that_say_how_to_fetch(key):
    """Published without a checksum, these cards carry their URL and no sha256: the first fetch
    pins it (trust on first use). Offline they say what is needed."""
    card = get_card(key)
    (wf,) = card.weight_files
    assert card.available and wf.sha256 is None and wf.mirrors and not wf.hf_repo
    url = wf.mirrors[0].url
    assert url.startswith("https://") and url.endswith(wf.filename)
    with pytest.raises(WeightsNotAvailableError, match=rf"{key}.*network needed(.|\n)*URL {url}: "
                                                       rf"(.|\n)*`mlipzoo models fetch {key}`"):
        resolve_weights(card)


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An importable package holding a weights file, like chgnet or sevenn ship theirs."""
    root = tmp_path / "site"
    pkg = root / "fakeweights"
    (pkg / "pretrained").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "pretrained" / "w.bin").write_bytes(PAYLOAD)
    monkeypatch.syspath_prepend(str(root))
    yield pkg
    sys.modules.pop("fakeweights", None)


PKG_CARD = """\
key: pkg-model
name: Package model
version: "1"
family: emt
license: MIT
targets: EFS
weights:
  - filename: w.bin
    sha256: {sha}
    mirrors: [{{package: fakeweights, path: pretrained/w.bin}}]
"""


def test_package_mirror_is_verified_offline(fake_package, card_dir):
    card = read_card(card_dir("pkg-model", PKG_CARD.format(sha=sha256(PAYLOAD))))
    found = resolve_weights(card)["w.bin"]
    assert found.source == "package" and found.path == fake_package / "pretrained" / "w.bin"


def test_tampered_package_copy_is_refused_not_loaded(fake_package, card_dir):
    (fake_package / "pretrained" / "w.bin").write_bytes(b"swapped")
    card = read_card(card_dir("pkg-model", PKG_CARD.format(sha=sha256(PAYLOAD))))
    with pytest.raises(WeightsNotAvailableError, match=r"REFUSED: sha256 .* != .*reinstall the package"):
        resolve_weights(card)
    assert (fake_package / "pretrained" / "w.bin").read_bytes() == b"swapped"  # never moved out of site-packages


def test_real_package_mirrors_verify(tmp_path):
    files = resolve_weights(get_card("sevennet-0"))
    (only,) = files.values()
    assert only.source == "package" and only.sha256 == get_card("sevennet-0").weights[0].sha256


def test_untrusted_pickle_checkpoint_is_refused(tmp_path, card_dir):
    torch = pytest.importorskip("torch")

    import fractions

    path = tmp_path / "evil.pt"  # any non-tensor global means unpickling imports and calls code
    torch.save({"model": fractions.Fraction(1, 3)}, path)
    card = read_card(card_dir("pkg-model", PKG_CARD.format(sha=sha256(path.read_bytes()))))
    with pytest.raises(UntrustedCheckpointError, match=r"needs full unpickling.*fractions.Fraction.*trusted: true"):
        assert_safe_checkpoint(card, path)
    safe = tmp_path / "safe.pt"
    torch.save({"w": torch.zeros(3)}, safe)
    assert_safe_checkpoint(card, safe)  # plain tensors pass
