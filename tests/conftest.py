from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from hub_server import FakeHub


@pytest.fixture(scope="session", autouse=True)
def test_calculators():
    """`family: ase` cards may import tests/fake_calcs.py, as a user allows a module of their own
    (session-wide, so module-scoped fixtures and Dask workers see it too)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLIPZOO_CALCULATOR_MODULES", "fake_calcs")
        yield


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Every test gets its own caches and starts offline; Hub tests point HF_ENDPOINT at loopback."""
    monkeypatch.setenv("MLIPZOO_CACHE", str(tmp_path / "mlipzoo-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MLIPZOO_OFFLINE", raising=False)
    monkeypatch.delenv("MLIPZOO_CARDS", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "5")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "5")


@pytest.fixture
def fake_hub(monkeypatch):
    hub = FakeHub()
    endpoint = hub.start()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    yield hub
    hub.stop()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def card_dir(tmp_path):
    """A writable card folder; ``write(key, yaml_text)`` adds ``<key>.yaml`` to it."""
    folder = tmp_path / "cards"
    folder.mkdir()

    def write(key: str, text: str) -> Path:
        path = folder / f"{key}.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    write.dir = folder
    return write


def pytest_configure(config):
    config.addinivalue_line("markers", "catalogue(name): one class of bad input in the bad-input catalogue")


def pytest_terminal_summary(terminalreporter):
    """Print how many classes of bad input the catalogue covered (issue: reliability)."""
    passed = {r.nodeid for r in terminalreporter.stats.get("passed", []) if "catalogue" in r.keywords}
    failed = {r.nodeid for r in terminalreporter.stats.get("failed", []) if "catalogue" in r.keywords}
    if passed or failed:
        terminalreporter.write_line(f"bad-input catalogue: {len(passed)} classes handled, {len(failed)} failing")
