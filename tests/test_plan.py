"""The plan (evaluators/plan.py): what an evaluation depends on is resolved once on the driver,
and no file is hashed twice in a process, however many steps ask for its sha256."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mlip_zoo.zoo.weights as weights
from mlip_zoo.cli import app


class CountingMemo(dict):
    """``sha256_of``'s memo, counting how often each file is actually hashed (stored)."""

    def __init__(self):
        super().__init__()
        self.hashed: Counter[str] = Counter()

    def __setitem__(self, key, value):
        self.hashed[key[0]] += 1
        super().__setitem__(key, value)


@pytest.mark.slow
def test_one_eval_hashes_the_dataset_and_each_weight_file_once(tmp_path, monkeypatch):
    """`mlipzoo eval` in-process: the card check, the environment step, the plan, the worker's
    model load, the predictions and the record all want sha256s; each file is read once."""
    from mlip_zoo.evaluators.plan import RunOptions, make_plan
    from mlip_zoo.zoo.card import get_card

    memo = CountingMemo()
    monkeypatch.setattr(weights, "_HASHED", memo)
    card = get_card("chgnet-0.3.0")
    result = CliRunner().invoke(app, ["eval", card.key, "oc20-s2ef", "--limit", "2", "--workers", "0",
                                      "--out", str(tmp_path), "--wandb", "disabled", "--json"])
    assert result.exit_code == 0, result.output
    plan = make_plan(card, "oc20-s2ef", RunOptions())  # the same files again: all from the memo
    dataset = str(plan.dataset.path.resolve())
    weight_files = [str(Path(f.path).resolve()) for f in weights.resolve_weights(card).values()]
    # a dataset folder (oc20-mini's raw S2EF layout) is hashed as its files, each once
    files = [dataset] if plan.dataset.path.is_file() else \
        [str(p.resolve()) for p in plan.dataset.path.rglob("*") if p.is_file()]
    assert weight_files and files and all(memo.hashed[f] == 1 for f in files), memo.hashed
    assert all(memo.hashed[path] == 1 for path in weight_files), memo.hashed
    assert max(memo.hashed.values()) == 1, [p for p, n in memo.hashed.items() if n > 1]


def test_a_rewritten_file_is_hashed_again(tmp_path, monkeypatch):
    memo = CountingMemo()
    monkeypatch.setattr(weights, "_HASHED", memo)
    path = tmp_path / "w.bin"
    path.write_bytes(b"one")
    first = weights.sha256_of(path)
    path.write_bytes(b"two")  # same size, within the clock's granularity: must not come from the memo
    assert weights.sha256_of(path) != first and not memo  # fresh files are never remembered
    old = path.stat().st_mtime - 60
    __import__("os").utime(path, (old, old))  # an old file (its ctime is new: still not remembered)
    assert weights.sha256_of(path) == weights.sha256_of(path) and not memo
