"""Issue #22: `mlipzoo verify` re-runs a seeded sample of a result with the model its card pins.
A genuine result verifies; one whose predictions are the labels, or another model's, validates
(every derived field made to agree, as tests/test_forgery.py forges) but fails verify, naming the
structures; the sidecar it writes is checked by validate and shown by the site; the workflow that
runs it on pull requests is label-gated and never runs the pull request's code."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from mlip_zoo.cli import app
from mlip_zoo.evaluators.runner import RunOptions, evaluate
from mlip_zoo.evaluators.store import ResultError, ResultStore
from mlip_zoo.leaderboard.verify import check_verification, draw_sample, verify_result
from test_forgery import forge

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "verify-submission.yml"
runner = CliRunner()

# A second model that runs anywhere, instantly, and is not the one that labelled oc20-mini (EMT):
# ASE's Lennard-Jones, an allow-listed in-process calculator.
LJ_CARD = """\
key: lj-test
name: Lennard-Jones (test)
version: "1"
family: ase
calculator: "ase.calculators.lj:LennardJones"
calculator_kwargs: {sigma: 2.3, epsilon: 0.05, rc: 6.0}
license: MIT
targets: EFS
elements: [Al, Cu, Ag, Au, Ni, Pd, Pt, H, C, N, O]
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Genuine oc20-s2ef results of EMT and of the LJ card (40 frames each), and the card folder."""
    root = tmp_path_factory.mktemp("made")
    cards = root / "cards"
    cards.mkdir()
    (cards / "lj-test.yaml").write_text(LJ_CARD)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLIPZOO_CARDS", str(cards))
        for model in ("emt", "lj-test"):
            evaluate(model, "oc20-s2ef", RunOptions(out=root / "results", workers=0, limit=40))
    return root


@pytest.fixture
def results(made, tmp_path, monkeypatch):
    monkeypatch.setenv("MLIPZOO_CARDS", str(made / "cards"))
    shutil.copytree(made / "results", tmp_path / "results", ignore=shutil.ignore_patterns(".shards"))
    return tmp_path / "results"


def _verify(path: Path, *args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["verify", str(path), "--json", *args])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def _validate(path: Path) -> dict:
    result = runner.invoke(app, ["validate", str(path), "--json"])
    (row,) = json.loads(result.stdout)
    return row


def test_a_genuine_result_verifies_and_validate_checks_its_record(results):
    for model in ("emt", "lj-test"):
        path = results / model / "oc20-s2ef.json"
        code, report = _verify(path, "--sample", "6", "--seed", "3")
        assert code == 0 and report["ok"] and report["outcome"] == "verified"
        assert report["checked"] == report["agreed"] == 6 and report["disagreements"] == []
        assert report["sample"] == [pq.read_table(path.with_suffix(".parquet")).column("id")[i].as_py()
                                    for i in draw_sample(40, 6, 3)]
        sidecar = ResultStore(results).verification_path(model, "oc20-s2ef")
        assert report["sidecar"] == str(sidecar) and sidecar.is_file()
        row = _validate(path)
        assert row["ok"] and row["verification"] == "re-run verified (6/6)", row
    # every column the task names was compared, within its tolerance; EMT reproduces itself to round-off
    worst = max(s["columns"]["forces_pred"]["max_abs_diff"] for s in report["structures"])
    assert worst < 1e-9


def test_predictions_replaced_by_the_labels_validate_but_fail_verify(results):
    path = results / "lj-test" / "oc20-s2ef.json"
    table = pq.read_table(path.with_suffix(".parquet"))
    table = table.set_column(table.schema.get_field_index("energy_pred"), "energy_pred", table.column("energy_true"))
    table = table.set_column(table.schema.get_field_index("forces_pred"), "forces_pred", table.column("forces_true"))
    forge(path, table)
    assert _validate(path)["ok"]  # every metric recomputes: a perfect score, on paper
    # the forged predictions are the labels' own floats: every difference is 0 (stated tolerance 1e-12)
    assert json.loads(path.read_text())["metrics"]["forces_mae"] == pytest.approx(0.0, abs=1e-12)
    result = runner.invoke(app, ["verify", str(path), "--sample", "5"])
    assert result.exit_code == 1
    ids = [table.column("id")[i].as_py() for i in draw_sample(40, 5, 0)]
    ok_ids = [i for i, s in zip(ids, [table.column("status")[j].as_py() for j in draw_sample(40, 5, 0)]) if s == "ok"]
    assert ok_ids and all(i in result.output for i in ok_ids), result.output
    assert re.search(r"structure\(s\) .* disagree with the re-run", result.output)
    verified = check_verification(path)  # the failure is recorded, consistently
    assert verified.outcome == "failed" and verified.disagreements == ok_ids
    assert "energy_pred differs by up to" in verified.structures[0].why
    assert _validate(path)["verification"].startswith("re-run disagrees")


def test_another_models_predictions_fail_verify(results):
    """EMT's predictions, metrics and all, filed as the LJ model's with its card's sha256."""
    lj = json.loads((results / "lj-test" / "oc20-s2ef.json").read_text())
    for name in ("oc20-s2ef.json", "oc20-s2ef.parquet"):
        shutil.copy(results / "emt" / name, results / "lj-test" / name)
    path = results / "lj-test" / "oc20-s2ef.json"
    record = json.loads(path.read_text())
    forge(path, pq.read_table(path.with_suffix(".parquet")), model="lj-test",
          provenance={**record["provenance"], "card_sha256": lj["provenance"]["card_sha256"]})
    assert _validate(path)["ok"]
    code, report = _verify(path, "--sample", "4")
    assert code == 1 and report["outcome"] == "failed" and len(report["disagreements"]) == report["checked"] == 4


def test_the_sample_comes_from_the_seed():
    assert draw_sample(465, 8, 0) == draw_sample(465, 8, 0)
    assert draw_sample(465, 8, 0) != draw_sample(465, 8, 1)
    assert draw_sample(465, 8, 0)[:3] == draw_sample(465, 3, 0)  # a smaller sample is a prefix
    assert sorted(draw_sample(5, 8, 0)) == [0, 1, 2, 3, 4]  # never more than the rows


def test_same_seed_same_sample_other_seed_other_sample(results):
    path = results / "emt" / "oc20-s2ef.json"
    samples = [_verify(path, "--sample", "4", "--seed", seed, "--no-record")[1]["sample"] for seed in ("7", "7", "8")]
    assert samples[0] == samples[1] != samples[2]
    assert not ResultStore(results).verification_path("emt", "oc20-s2ef").exists()  # --no-record


def test_the_time_budget_stops_after_the_first_structure(results):
    path = results / "emt" / "oc20-s2ef.json"
    code, report = _verify(path, "--sample", "6", "--budget", "1e-9")
    assert code == 0 and report["checked"] == 1 and len(report["sample"]) == 6
    assert _validate(path)["verification"] == "re-run verified (1/1)"


def _tamper(path: Path, **changes) -> None:
    sidecar = path.with_name(path.stem + ".verified.json")
    data = json.loads(sidecar.read_text())
    data.update(changes)
    sidecar.write_text(json.dumps(data))


@pytest.mark.parametrize("change, message", [
    (lambda v: {"seed": v["seed"] + 1}, r"is not the one seed 1 draws"),
    (lambda v: {"sample": v["sample"][::-1]}, r"is not the one seed 0 draws"),
    (lambda v: {"outcome": "verified", "disagreements": [], "agreed": v["checked"]}, r"`agree` is False|does not follow"),
    (lambda v: {"tolerance": {"energy_pred": {"abs": 10.0, "rel": 0.0}, "forces_pred": {"abs": 10.0, "rel": 0.0}}},
     r"used tolerances .* the task's are now"),
])
def test_validate_refuses_an_inconsistent_verification(results, change, message):
    path = results / "lj-test" / "oc20-s2ef.json"
    table = pq.read_table(path.with_suffix(".parquet"))
    forge(path, table.set_column(table.schema.get_field_index("energy_pred"), "energy_pred",
                                 pc.add(table.column("energy_pred"), 1.0)))  # every energy 1 eV off
    verify_result(path, sample=3)
    sidecar = json.loads(path.with_name("oc20-s2ef.verified.json").read_text())
    _tamper(path, **change(sidecar))
    row = _validate(path)
    assert not row["ok"] and re.search(message, row["error"]), row


def test_a_verification_of_other_predictions_is_refused(results):
    path = results / "emt" / "oc20-s2ef.json"
    verify_result(path, sample=2)
    table = pq.read_table(path.with_suffix(".parquet"))
    forge(path, table.set_column(table.schema.get_field_index("energy_pred"), "energy_pred",
                                 pc.add(table.column("energy_pred"), 1e-3)))
    with pytest.raises(ResultError, match=r"verified predictions with sha256 \w+; the result now commits to \w+"):
        check_verification(path)


def test_a_task_without_verify_settings_says_why(results, tmp_path):
    from mlip_zoo.evaluators.base import load_task_config

    assert load_task_config("ttr").verify is None
    assert "trains on the whole test set" in (REPO / "configs" / "tasks" / "ttr.yaml").read_text()


def test_the_site_shows_verification_and_limits_the_combined_score(tmp_path):
    """One verified and one unverified ranked result: the badges, and the data the page's switch uses."""
    from mlip_zoo.leaderboard.ranking import _combined_terms, combined
    from mlip_zoo.leaderboard.site import build_site

    out = tmp_path / "results"
    for task in ("eos", "symmetry"):
        evaluate("emt", task, RunOptions(out=out, workers=0, limit=3))
    verify_result(out / "emt" / "eos.json", sample=2)
    index = build_site(out, tmp_path / "site").read_text()
    assert "re-run verified (2/2)" in index and "recomputed only" in index and 'id="verified-only"' in index
    data = json.loads(re.search(r'id="leaderboard-data">(.*?)</script>', index, re.S).group(1))
    (model,) = data["models"]
    assert model["verified"] == ["eos"]
    terms = {t: s for t, s in _combined_terms().items() if t in ("eos", "symmetry")}
    assert model["verified_score"] == combined(model["values"], terms, model["coverage"], only=["eos"])["score"]
    assert combined(model["values"], terms, model["coverage"], only=[])["score"] is None


@pytest.mark.slow
def test_chgnet_reproduces_its_own_s2ef_predictions(tmp_path):
    """A float32 model: the run's batched predictions and a re-run of each frame alone agree within
    the task's tolerance (in this process they agree exactly; against the committed 2-worker run,
    7.6e-6 eV and 3.5e-5 eV/Å were measured on 40 frames)."""
    evaluate("chgnet-0.3.0", "oc20-s2ef", RunOptions(out=tmp_path, workers=0, limit=6))
    code, report = _verify(tmp_path / "chgnet-0.3.0" / "oc20-s2ef.json", "--sample", "3")
    assert code == 0 and report["outcome"] == "verified" and report["checked"] == 3
    assert max(s["columns"]["forces_pred"]["max_abs_diff"] for s in report["structures"]) < 1e-3


# ---------------------------------------------------------------------------------------------
# The workflow


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def test_the_workflow_is_label_gated_and_never_runs_the_pull_requests_code():
    flow = _workflow()
    trigger = flow.get("on", flow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert trigger == {"pull_request_target": {"types": ["labeled"]}}
    assert flow["permissions"] == {"contents": "read"}
    text = WORKFLOW.read_text()
    assert "secrets." not in text and "pull_request.title" not in text and "head.ref" not in text
    for name, job in flow["jobs"].items():
        runs_models = any("mlipzoo verify" in s.get("run", "") for s in job["steps"])
        if not runs_models:
            continue
        assert re.fullmatch(r"github\.event\.label\.name == '[a-z-]+'", job["if"]), job.get("if")
        checkouts = [s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout")]
        assert checkouts, "the job runs the base branch's code, checked out"
        for step in checkouts:
            with_ = step.get("with", {})
            assert with_.get("ref") == "${{ github.event.pull_request.base.sha }}", step
            assert with_.get("persist-credentials") is False
            assert "head" not in json.dumps(with_) and "refs/pull" not in json.dumps(with_)
        for step in job["steps"]:
            run = step.get("run", "")
            # installs only the base checkout; the pull request's commit is read with `git show`, never checked out
            assert set(re.findall(r"pip install (\S+)", run)) <= {"--upgrade", "torch==2.13.0", "./base"}, run
            assert not re.search(r"git (checkout|switch|worktree|reset|merge|pull)\b", run), run
            assert "${{ github.event.pull_request.head" not in run  # PR values reach scripts only via env
        verify_step = next(s for s in job["steps"] if "mlipzoo verify" in s.get("run", ""))
        assert "--env isolated" in verify_step["run"] and "--cards configs/models" in verify_step["run"]
