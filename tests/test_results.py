"""Result files: validation for pull requests, reproduction, and scaffolding a submission."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlip_zoo.cli import app
from mlip_zoo.evaluators.runner import RunOptions, evaluate
from mlip_zoo.leaderboard.results import ResultError, recompute

runner = CliRunner()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    evaluate("emt", "oc20-s2ef", RunOptions(out=out, workers=0, limit=30))
    evaluate("emt", "oc20-is2rs", RunOptions(out=out, workers=0, limit=4))
    return out


@pytest.fixture
def copy(results, tmp_path):
    target = tmp_path / "results"
    shutil.copytree(results, target)
    return target


def test_the_repos_own_results_validate_and_reproduce(results):
    result = runner.invoke(app, ["validate", str(results), "--json"])
    assert result.exit_code == 0, result.output
    checked = json.loads(result.stdout)
    assert [r["kind"] for r in checked] == ["result", "result"] and all(r["ok"] for r in checked)
    result = runner.invoke(app, ["reproduce", str(results / "emt" / "oc20-is2rs.json")])
    assert result.exit_code == 0 and "reproduced" in result.stdout


def test_hand_edited_metric_is_rejected(copy):
    path = copy / "emt" / "oc20-s2ef.json"
    record = json.loads(path.read_text())
    honest = record["metrics"]["forces_mae"]
    record["metrics"]["forces_mae"] = 0.01  # a better-looking number than the predictions support... or worse
    record["metrics"]["splits"]["id"]["energy_mae"] = 0.5
    path.write_text(json.dumps(record))
    comparison = recompute(path)
    assert {d[0] for d in comparison.differences} == {"forces_mae", "splits.id.energy_mae"}
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert f"forces_mae: claimed 0.01, recomputed {honest}" in result.stderr
    result = runner.invoke(app, ["reproduce", str(path), "--json"])
    assert result.exit_code == 1 and not json.loads(result.stdout)["ok"]


def test_missing_predictions_file_is_rejected(copy):
    (copy / "emt" / "oc20-s2ef.parquet").unlink()
    with pytest.raises(ResultError, match="predictions file .* is missing"):
        recompute(copy / "emt" / "oc20-s2ef.json")


def test_predictions_path_cannot_escape(copy):
    path = copy / "emt" / "oc20-s2ef.json"
    record = json.loads(path.read_text())
    record["predictions"] = "../../etc/passwd"
    path.write_text(json.dumps(record))
    with pytest.raises(ResultError, match="must be a file beside the result"):
        recompute(path)


def test_newer_schema_and_incomplete_provenance_are_named(copy):
    path = copy / "emt" / "oc20-s2ef.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "schema_version": 99}))
    with pytest.raises(ResultError, match="newer mlip-zoo .*schema 99.*upgrade"):
        recompute(path)
    del record["provenance"]["hardware"]
    path.write_text(json.dumps(record))
    with pytest.raises(ResultError, match="provenance is incomplete: missing hardware"):
        recompute(path)


def test_truncated_predictions_are_rejected(copy):
    parquet = copy / "emt" / "oc20-s2ef.parquet"
    parquet.write_bytes(parquet.read_bytes()[:200])
    with pytest.raises(ResultError, match="cannot be read"):
        recompute(copy / "emt" / "oc20-s2ef.json")


def test_pickle_card_without_trust_is_rejected(tmp_path):
    card = tmp_path / "pickled.yaml"
    card.write_text("key: pickled\nname: P\nversion: '1'\nfamily: mace\nlicense: MIT\ntargets: EFS\n"
                    "weights:\n  - {filename: m.model, hf_repo: org/m, revision: main}\n")
    result = runner.invoke(app, ["validate", str(card)])
    assert result.exit_code == 1 and "is a pickle" in result.stderr and "trusted: true" in result.stderr


def test_tampered_package_weights_are_caught_by_validate(tmp_path):
    card = tmp_path / "bad-sum.yaml"
    card.write_text("key: bad-sum\nname: B\nversion: '1'\nfamily: sevenn\nlicense: MIT\ntargets: EFS\n"
                    "weights:\n  - filename: checkpoint_sevennet_0.pth\n    sha256: '" + "0" * 64 + "'\n"
                    "    mirrors: [{package: sevenn, path: pretrained_potentials/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth}]\n")
    pytest.importorskip("sevenn")
    result = runner.invoke(app, ["validate", str(card)])
    assert result.exit_code == 1 and "card says 000000" in result.stderr


def test_submit_scaffolds_a_valid_card(tmp_path):
    answers = "\n".join(["my-lj", "LJ argon", "1", "ase", "MIT", "EFS", "total", "", "", "", "Ar-only",
                         "ase.calculators.lj:LennardJones", "none", ""])
    result = runner.invoke(app, ["submit", "--out", str(tmp_path)], input=answers)
    assert result.exit_code == 0, result.output
    text = (tmp_path / "my-lj.yaml").read_text()
    assert "calculator: ase.calculators.lj:LennardJones" in text and "training_sets:\n- Ar-only" in text
    assert runner.invoke(app, ["validate", str(tmp_path / "my-lj.yaml")]).exit_code == 0


@pytest.mark.slow
@pytest.mark.labels  # made on another CPU: recomputed here, within each task's recompute_rel_tol
def test_committed_results_of_the_repo_validate():
    repo_results = Path(__file__).resolve().parents[1] / "results"
    assert repo_results.is_dir(), "the repository ships the default run's results in results/"
    result = runner.invoke(app, ["validate", str(repo_results), "--json"])
    assert result.exit_code == 0, result.output
    checked = json.loads(result.stdout)
    assert len(checked) >= 9 and all(r["ok"] and r["kind"] == "result" for r in checked)
