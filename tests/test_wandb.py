"""W&B logging: an offline run file carries the metrics and config; a W&B failure loses nothing."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mlip_zoo.cli import app
from wandb_reader import offline_config, offline_summary, read_run_file

from labels import assert_reproduces_labels

runner = CliRunner()


@pytest.mark.labels
def test_offline_run_file_holds_the_metrics(tmp_path):
    result = runner.invoke(app, ["eval", "emt", "oc20-s2ef", "--workers", "0", "--limit", "25",
                                 "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    summary = offline_summary(run_file)
    assert_reproduces_labels(record)  # and W&B holds exactly the record's numbers:
    assert summary["forces_mae"] == record["metrics"]["forces_mae"]
    assert summary["energy_forces_within_threshold"] == record["metrics"]["energy_forces_within_threshold"]
    assert summary["splits/id/energy_mae"] == record["metrics"]["splits"]["id"]["energy_mae"]
    assert summary["interval/forces_mae"] == record["intervals"]["forces_mae"]
    assert summary["n_structures"] == 25 and summary["predictions/nrows"] == 25
    config = offline_config(run_file)
    assert config["model"]["key"] == "emt" and config["task"]["key"] == "oc20-s2ef"
    assert config["dataset"]["sha256"] == record["dataset"]["sha256"]
    kinds = [r.WhichOneof("record_type") for r in read_run_file(run_file)]
    assert "artifact" in kinds and kinds[0] == "header"
    run = next(r.run for r in read_run_file(run_file) if r.WhichOneof("record_type") == "run")
    assert set(run.tags) == {"emt", "oc20-s2ef", "oc20-mini (EMT labels)"}


def test_wandb_failure_keeps_the_local_result(tmp_path, monkeypatch):
    import wandb

    def broken(*args, **kwargs):
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(wandb, "init", broken)
    result = runner.invoke(app, ["eval", "emt", "oc20-s2ef", "--workers", "0", "--limit", "10", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "W&B logging failed" in result.stderr and "W&B is down" in result.stderr
    assert json.loads((tmp_path / "emt" / "oc20-s2ef.json").read_text())["n_structures"] == 10


def test_wandb_disabled_writes_no_run(tmp_path):
    result = runner.invoke(app, ["eval", "emt", "oc20-s2ef", "--workers", "0", "--limit", "5", "--out", str(tmp_path),
                                 "--wandb", "disabled"])
    assert result.exit_code == 0 and not (tmp_path / "wandb").exists()
