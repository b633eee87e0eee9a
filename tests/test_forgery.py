"""Issue #21: results that would validate but are not what they claim. Each forgery below is made
the way a careful forger would make it -- metrics, intervals, counts, failures, the predictions'
sha256 and the reference digest all recomputed to match -- so what refuses it is the check that
ties the result to its folder, card, dataset or schema, named in the message."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from ase.build import fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from typer.testing import CliRunner

import mlip_zoo.evaluators.store as result_module
from mlip_zoo.cli import app
from mlip_zoo.evaluators import scoring
from mlip_zoo.evaluators.base import evaluator_for
from mlip_zoo.evaluators.result import ReferenceDigest
from mlip_zoo.evaluators.runner import RunOptions, evaluate
from mlip_zoo.leaderboard.results import ResultError, compare, validate_result
from mlip_zoo.zoo.weights import sha256_of

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "validate-submission.yml"
catalogue = pytest.mark.catalogue
runner = CliRunner()


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    out = tmp_path_factory.mktemp("honest")
    evaluate("emt", "oc20-s2ef", RunOptions(out=out, workers=0, limit=60))
    return out


@pytest.fixture
def results(honest, tmp_path):
    shutil.copytree(honest, tmp_path / "results", ignore=shutil.ignore_patterns(".shards"))
    return tmp_path / "results"


def forge(path: Path, table: pa.Table, **fields) -> None:
    """Write ``table`` as the result's predictions and make every derived field of the record
    agree with it (metrics, intervals, counts, failures, sha256, reference digest)."""
    record = json.loads(path.read_text())
    record.update(fields)
    evaluator = evaluator_for(record["task"])
    parquet = path.parent / record["predictions"]
    pq.write_table(table, parquet)
    try:
        scored = scoring.score(evaluator, [table], evaluator.config.bootstrap)  # the one scoring path
        record["metrics"], record["intervals"] = json.loads(json.dumps([scored.metrics, scored.intervals]))
        record["provenance"]["bootstrap"] = scored.bootstrap
        if scored.fitted:  # constants fitted to the predictions (the OC20 alignment) follow them too
            record["provenance"]["fitted"] = json.loads(json.dumps(scored.fitted))
    except (ValueError, TypeError, KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass  # a table metrics cannot read (wrong types): keep the copied numbers
    failed = table.filter(pc.not_equal(table.column("status"), "ok"))
    record["failures"] = failed.select(["id", "reason"]).to_pylist()
    record.update(n_structures=table.num_rows, n_failed=failed.num_rows, predictions_sha256=sha256_of(parquet))
    record["dataset"]["n"] = table.num_rows
    digest = ReferenceDigest(tuple(record["references"]["columns"]))
    if set(digest.columns) <= set(table.column_names):
        digest.update(table)
        record["references"] = digest.record()
    path.write_text(json.dumps(record))


def s2ef(results: Path, model: str = "emt") -> tuple[Path, pa.Table]:
    path = results / model / "oc20-s2ef.json"
    return path, pq.read_table(path.with_suffix(".parquet"))


def test_fresh_results_of_several_tasks_validate(tmp_path):
    for task, limit in (("oc20-s2ef", 30), ("oc20-is2re", 4), ("discovery", 5), ("symmetry", 3)):
        evaluate("emt", task, RunOptions(out=tmp_path, workers=0, limit=limit))
    result = runner.invoke(app, ["validate", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    checked = json.loads(result.stdout)
    assert len(checked) == 4 and all(r["ok"] and r["references"].startswith("re-derived from") for r in checked)


@catalogue
def test_another_models_predictions_with_its_metrics(results):
    """EMT's predictions and metrics, presented as SevenNet-0's."""
    (results / "sevennet-0").mkdir()
    for name in ("oc20-s2ef.json", "oc20-s2ef.parquet"):
        shutil.copy(results / "emt" / name, results / "sevennet-0" / name)
    path, table = s2ef(results, "sevennet-0")
    forge(path, table, model="sevennet-0")
    with pytest.raises(ResultError, match=r"provenance.card_sha256 \w+ is not the sha256 of sevennet-0's card .*"
                                          r"made with another card or model"):
        validate_result(path)


@catalogue
def test_result_filed_under_another_models_folder(results):
    path, table = s2ef(results)
    forge(path, table, model="sevennet-0")
    with pytest.raises(ResultError, match=r"a result of model 'sevennet-0' on task 'oc20-s2ef' is filed as "
                                          r"<results>/sevennet-0/oc20-s2ef.json .* this one is emt/oc20-s2ef.json"):
        validate_result(path)


@catalogue
def test_result_made_with_an_edited_card(results, card_dir):
    card = yaml.safe_load((REPO / "configs" / "models" / "emt.yaml").read_text())
    card["elements"] = ["Cu"]  # another model under the same key
    card_dir("emt", yaml.safe_dump(card))
    with pytest.raises(ResultError, match=r"card_sha256 \w+ is not the sha256 of emt's card .*/cards/emt.yaml"):
        validate_result(results / "emt" / "oc20-s2ef.json", cards=card_dir.dir)


@catalogue
def test_ten_best_of_sixty_structures(results):
    path, table = s2ef(results)
    forge(path, table.take(np.arange(0, 60, 6)))  # the 10 it did best on, in dataset order
    with pytest.raises(ResultError, match=r"predictions row \d+ is structure '.*', record \d+ of s2ef is .*"
                                          r"rows are the dataset's records in its order"):
        validate_result(path)


@catalogue
def test_first_ten_of_sixty_without_a_limit(results):
    path, table = s2ef(results)
    record = json.loads(path.read_text())
    forge(path, table.slice(0, 10), dataset={**record["dataset"], "limit": None})
    with pytest.raises(ResultError, match=r"the predictions end at row 10, before record 10 of s2ef; "
                                          r"a result holds a row for every record"):
        validate_result(path)


@catalogue
def test_sixty_rows_claiming_a_limit_of_thirty(results):
    path, table = s2ef(results)
    record = json.loads(path.read_text())
    forge(path, table, dataset={**record["dataset"], "limit": 30})
    with pytest.raises(ResultError, match=r"predictions hold structure '.*' and more beyond its first 30 records of s2ef"):
        validate_result(path)


@catalogue
def test_reference_columns_that_are_not_the_datasets_labels(results):
    """Labels of another making (shifted by 0.1 eV) in place of the dataset's."""
    path, table = s2ef(results)
    table = table.set_column(table.schema.get_field_index("energy_true"), "energy_true",
                             pc.add(table.column("energy_true"), 0.1))
    forge(path, table)
    with pytest.raises(ResultError, match=r"structure '[\d_]+': energy_true differ\(s\) from what s2ef gives"):
        validate_result(path)


@catalogue
def test_reference_columns_changed_where_the_dataset_is_not_at_hand(tmp_path):
    frames = []
    for i in range(4):
        atoms = fcc111("Cu", (2, 2, 2), vacuum=6.0)
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        frames.append(atoms)
    from ase.io import write

    data = tmp_path / "mine.extxyz"
    write(data, frames, format="extxyz")
    evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path / "out", workers=0, dataset=data))
    path = tmp_path / "out" / "emt" / "oc20-s2ef.json"
    assert validate_result(path, datasets=[data]).references == "re-derived from mine.extxyz"
    assert validate_result(path).references.startswith("checked against the digest")
    parquet = path.with_suffix(".parquet")
    table = pq.read_table(parquet)
    table = table.set_column(table.schema.get_field_index("energy_true"), "energy_true",
                             pc.add(table.column("energy_true"), 0.1))
    pq.write_table(table, parquet)  # a forger who fixes the sha256 but cannot know the digest's meaning
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "predictions_sha256": sha256_of(parquet)}))
    with pytest.raises(ResultError, match=r"do not match the digest `references` recorded at eval time"):
        validate_result(path)
    with pytest.raises(ResultError, match=r"structure '#0': energy_true differ\(s\) from what mine.extxyz gives"):
        validate_result(path, datasets=[data])


@catalogue
def test_energies_stored_as_strings(results):
    path, table = s2ef(results)
    column = table.schema.get_field_index("energy_pred")
    forge(path, table.set_column(column, "energy_pred", pc.cast(table.column("energy_pred"), pa.string())))
    with pytest.raises(ResultError, match=r"oc20-s2ef.parquet does not follow the oc20-s2ef predictions schema: "
                                          r"energy_pred is string, not double"):
        validate_result(path)


@catalogue
def test_missing_and_extra_columns(results):
    path, table = s2ef(results)
    forge(path, table.drop(["free"]).append_column("note", pa.array(["x"] * table.num_rows)))
    with pytest.raises(ResultError, match=r"free is missing; note is not a column of the task"):
        validate_result(path)


@catalogue
def test_torn_pair_is_refused(results, tmp_path):
    """Predictions of another run under a result that committed to other predictions."""
    evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path / "other", workers=0, limit=20))
    shutil.copy(tmp_path / "other" / "emt" / "oc20-s2ef.parquet", results / "emt" / "oc20-s2ef.parquet")
    with pytest.raises(ResultError, match=r"oc20-s2ef.parquet has sha256 \w+, the result committed to \w+: a torn pair"):
        validate_result(results / "emt" / "oc20-s2ef.json")


def test_interrupted_before_the_commit_keeps_the_old_pair(tmp_path, monkeypatch):
    evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path, workers=0, limit=30))

    def interrupted(path, record):
        raise KeyboardInterrupt

    monkeypatch.setattr(result_module, "write_record", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path, workers=0, limit=60))
    monkeypatch.undo()
    checked = validate_result(tmp_path / "emt" / "oc20-s2ef.json")
    assert checked.comparison.ok and json.loads((tmp_path / "emt" / "oc20-s2ef.json").read_text())["n_structures"] == 30


def test_interrupted_after_the_commit_reads_the_committed_predictions(tmp_path, monkeypatch):
    evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path, workers=0, limit=30))
    real_replace, calls = os.replace, []

    def stop_before_the_last_move(src, dst):
        calls.append(dst)
        if Path(dst).name == "oc20-s2ef.parquet" and Path(src).name.startswith(".oc20-s2ef.parquet."):
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(result_module.os, "replace", stop_before_the_last_move)
    with pytest.raises(KeyboardInterrupt):
        evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path, workers=0, limit=60))
    monkeypatch.undo()
    path = tmp_path / "emt" / "oc20-s2ef.json"
    assert json.loads(path.read_text())["n_structures"] == 60 and validate_result(path).comparison.ok
    evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path, workers=0, limit=60))  # finishes the move
    assert not list(path.parent.glob(".oc20-s2ef.parquet.*")) and validate_result(path).comparison.ok


def test_schema_2_result_still_validates_against_an_embedded_dataset(results):
    path = results / "emt" / "oc20-s2ef.json"
    record = json.loads(path.read_text())
    del record["predictions_sha256"], record["references"]
    path.write_text(json.dumps({**record, "schema_version": 2}))
    assert validate_result(path).references == "re-derived from s2ef"


def test_idless_frames_over_two_shards_get_unique_ids(tmp_path):
    frames = []
    for i in range(60):  # 12 atoms each: 720 atoms, two shards of 500
        atoms = fcc111("Cu", (2, 2, 3), vacuum=6.0)
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        frames.append(atoms)
    from ase.io import write

    data = tmp_path / "idless.extxyz"
    write(data, frames, format="extxyz")
    for model in ("a", "b"):
        evaluate("emt", "oc20-s2ef", RunOptions(out=tmp_path / model, workers=0, dataset=data))
    assert len(list((tmp_path / "a").rglob("shard-*.parquet"))) >= 2
    ids = pq.read_table(tmp_path / "a" / "emt" / "oc20-s2ef.parquet").column("id").to_pylist()
    assert ids == [f"#{i}" for i in range(60)]
    facts, _ = compare(tmp_path / "a" / "emt" / "oc20-s2ef.json", tmp_path / "b" / "emt" / "oc20-s2ef.json")
    assert facts["n_common"] == 60
    assert validate_result(tmp_path / "a" / "emt" / "oc20-s2ef.json", datasets=[data]).comparison.ok


# ---------------------------------------------------------------------------------------------
# The pull-request workflow


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _step(name_part: str) -> dict:
    (step,) = [s for s in _workflow()["jobs"]["validate"]["steps"] if name_part in s.get("name", "")]
    return step


def test_workflow_installs_the_base_branch_and_only_reads_the_pull_request():
    steps = _workflow()["jobs"]["validate"]["steps"]
    checkouts = {s["with"]["path"]: s["with"] for s in steps if s.get("uses", "").startswith("actions/checkout")}
    assert checkouts["base"]["ref"] == "${{ github.event.pull_request.base.sha }}"
    assert "ref" not in checkouts["pr"]  # the pull request's merge commit: data to read
    install = _step("install mlip-zoo")["run"]
    assert "pip install ./base" in install
    assert "pip install ." not in install.replace("pip install ./base", "") and " ./pr" not in install
    assert all("pip install" not in s.get("run", "") for s in steps if "install mlip-zoo" not in s.get("name", ""))


def test_a_predictions_only_change_is_validated(tmp_path):
    """Run the workflow's own script with git reporting a pull request that changed only a
    predictions file (plus a shard and a pending file, never data): its result is validated."""
    step = _step("validate changed")
    bin_dir, pr = tmp_path / "bin", tmp_path / "pr"
    bin_dir.mkdir()
    (pr / "results" / "emt").mkdir(parents=True)
    (pr / "results" / "emt" / "oc20-s2ef.json").write_text("{}")
    changed = ["results/emt/oc20-s2ef.parquet", "results/emt/.shards/abc/shard-00000.parquet",
               "results/emt/.oc20-s2ef.parquet." + "0" * 64, "results/gone/oc20-s2ef.parquet"]  # gone: deleted
    fakes = {"git": "printf '%s\\n' " + " ".join(changed), "mlipzoo": f"echo \"$@\" > {tmp_path / 'validated'}"}
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    env = {**os.environ, **step.get("env", {}), "BASE_SHA": "0" * 40, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    subprocess.run(["bash", "-e", "-c", step["run"]], cwd=tmp_path / step["working-directory"],
                   env=env, check=True)
    assert (tmp_path / "validated").read_text().split() == ["validate", "--cards", "configs/models",
                                                             "results/emt/oc20-s2ef.json"]
