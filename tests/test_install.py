"""The package installs under one import name, with its data, as a wheel."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

import mlip_zoo
from mlip_zoo.zoo.card import builtin_cards_dir


def test_no_generic_top_level_names_are_installed():
    # PyPI has packages called zoo, evaluators and leaderboard: ours live under mlip_zoo only.
    for name in ("zoo", "evaluators", "leaderboard", "configs"):
        assert importlib.util.find_spec(name) is None, name
    for name in ("mlip_zoo.zoo", "mlip_zoo.evaluators", "mlip_zoo.leaderboard", "mlip_zoo.configs"):
        assert importlib.util.find_spec(name) is not None, name


def test_cards_ship_with_the_package():
    assert len(list(builtin_cards_dir().glob("*.yaml"))) >= 15


@pytest.mark.skipif(not os.environ.get("MLIPZOO_EXPECT_WHEEL"), reason="only when testing the installed wheel")
def test_running_from_the_installed_wheel_not_the_source_tree():
    installed = Path(mlip_zoo.__file__).resolve()
    assert "site-packages" in installed.parts
    assert "site-packages" in builtin_cards_dir().resolve().parts
    assert mlip_zoo.__version__ != "0+unknown"
