"""The mlipzoo command line, through typer's runner and (for import-cost checks) a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mlip_zoo.cli import app

from labels import assert_reproduces_labels

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args))


def test_models_list_json_has_every_card_with_status():
    result = run("models", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["key"]: r for r in json.loads(result.stdout)}
    assert len(rows) >= 15
    assert rows["emt"]["weights"] == "none"
    assert rows["sevennet-0"]["weights"] == "local"
    assert rows["mace-mp-0b3-medium"]["weights"] == "download"
    assert rows["tdn"]["weights"] == "unavailable"


def test_models_show_json_and_matbench_export():
    shown = json.loads(run("models", "show", "chgnet-0.3.0", "--json").stdout)
    assert shown["key"] == "chgnet-0.3.0" and shown["weights"][0]["sha256"].startswith("d14ab7c0")
    exported = json.loads(run("models", "show", "chgnet-0.3.0", "--matbench").stdout)
    assert exported["model_name"] == "CHGNet 0.3.0" and exported["targets"] == "EFSM_G"


def test_unknown_model_is_a_clear_error():
    result = run("models", "show", "sevenet-0")
    assert result.exit_code == 1
    assert "no model card with key 'sevenet-0'" in result.stderr and "sevennet-0" in result.stderr


def test_models_check_emt_json():
    result = run("models", "check", "emt", "--json")
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)
    assert report["ok"] and report["net_force"] < 1e-10 and len(report["stress"]) == 6


def test_models_fetch_offline_hub_card_fails_with_fix():
    result = run("models", "fetch", "mace-mh-1")
    assert result.exit_code == 1
    assert "network needed" in result.stderr and "HF_HUB_OFFLINE" in result.stderr


def test_models_fetch_package_mirror_json():
    result = run("models", "fetch", "diep-fold1", "--json")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)
    assert {f["filename"] for f in entry["files"]} == {"model.json", "model.pt", "state.pt"}
    assert all(f["source"] == "package" for f in entry["files"])


def test_validate_accepts_the_repos_cards():
    from mlip_zoo.zoo.card import builtin_cards_dir

    result = run("validate", str(builtin_cards_dir()), "--json")
    assert result.exit_code == 0, result.output
    assert all(r["ok"] for r in json.loads(result.stdout))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("family: emt\nwarp_drive: true\n", "warp_drive: unknown field"),
        ("family: not-a-family\n", "unknown model family 'not-a-family'"),
        ("family: emt\nweights:\n  - {filename: ../w.pt, sha256: %s, mirrors: [{url: 'https://e.org/w'}]}\n" % ("0" * 64),
         "weights.0.filename"),
        ("family: emt\nweights:\n  - {filename: w.pt, mirrors: [{package: ase, path: w.pt}]}\n", "sha256 is required"),
    ],
    ids=["unknown-key", "unknown-family", "dotdot", "no-sha256"],
)
def test_validate_rejects_naming_the_field(tmp_path, body, message):
    card = tmp_path / "sub-model.yaml"
    card.write_text("key: sub-model\nname: S\nversion: '1'\nlicense: MIT\ntargets: EF\n" + body)
    result = run("validate", str(card))
    assert result.exit_code == 1
    assert message in result.stderr and str(card) in result.stderr


def test_help_imports_no_model_framework():
    code = ("import sys; from typer.testing import CliRunner; from mlip_zoo.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('torch', 'chgnet', 'sevenn', 'e3nn', 'huggingface_hub') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_importing_the_package_needs_no_network_or_extras():
    code = "import mlip_zoo.zoo, mlip_zoo.evaluators, mlip_zoo.leaderboard, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PATH": "", "HF_HUB_OFFLINE": "1"}).stdout
    assert out.strip() == "False"


def test_tasks_list_and_show():
    rows = json.loads(run("tasks", "list", "--json").stdout)
    assert {r["key"] for r in rows} >= {"oc20-s2ef", "oc20-is2re", "oc20-is2rs"}
    shown = json.loads(run("tasks", "show", "oc20-is2re", "--json").stdout)
    assert shown["options"]["relax"] == {"optimizer": "LBFGS", "fmax": 0.02, "steps": 300,
                                         "optimizer_kwargs": {"maxstep": 0.2, "memory": 50, "damping": 1.2,
                                                              "alpha": 80.0}}
    result = run("tasks", "show", "oc20-s2fe")
    assert result.exit_code == 1 and "did you mean oc20-s2ef" in result.stderr


@pytest.mark.labels
def test_eval_writes_result_and_prints_json(tmp_path):
    result = run("eval", "emt", "oc20-s2ef", "--workers", "0", "--limit", "30", "--out", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["dataset"]["limit"] == 30 and record["dataset"]["labelled_by"] == "emt"
    assert_reproduces_labels(record)
    assert (tmp_path / "emt" / "oc20-s2ef.json").exists()


def test_eval_of_hub_only_model_fails_clearly_offline(tmp_path):
    result = run("eval", "mace-mh-1", "oc20-s2ef", "--workers", "0", "--out", str(tmp_path))
    assert result.exit_code == 1 and "network needed" in result.stderr


def test_run_reports_each_pair_and_keeps_going(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"out: {tmp_path / 'res'}\nworkers: 0\nruns:\n"
                    "  - {models: [emt, mace-mh-1], tasks: [oc20-s2ef], limit: 20}\n")
    result = run("run", str(plan), "--json", "--site", str(tmp_path / "site"))
    assert result.exit_code == 1  # one pair failed...
    report = json.loads(result.stdout)
    assert [r["model"] for r in report["results"]] == ["emt"]  # ...and the other still ran
    assert report["errors"][0]["model"] == "mace-mh-1" and "network needed" in report["errors"][0]["error"]
    assert report["site"].endswith("index.html") and (tmp_path / "site" / "index.html").exists()
