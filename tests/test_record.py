"""The result record (evaluators/record.py): every committed result reads into it and writes back
byte for byte, schema-2 results migrate to what a schema-3 run records, and the exported JSON
Schema is the model's. Plus the memory bound of the one scoring path (evaluators/scoring.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlip_zoo.evaluators.record import RESULT_SCHEMA_VERSION, ResultRecord, json_schema
from mlip_zoo.evaluators.store import ResultError, read_record, result_files

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
COMMITTED = result_files(REPO / "results")


def test_the_repository_ships_results():
    assert len(COMMITTED) > 20


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_committed_result_reads_and_writes_back_byte_for_byte(path):
    record = read_record(path)
    assert record.schema_version == RESULT_SCHEMA_VERSION
    assert record.to_json() == path.read_text()


@pytest.mark.parametrize("path", COMMITTED[::4], ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_schema_2_result_migrates_to_what_schema_3_recorded(path, tmp_path):
    """A schema-2 file (no predictions_sha256, no references) gets both from its predictions,
    equal to what the run recorded."""
    data = json.loads(path.read_text())
    old = {k: v for k, v in data.items() if k not in ("predictions_sha256", "references")}
    old["schema_version"] = 2
    folder = tmp_path / path.parent.name
    folder.mkdir()
    shutil.copy(path.parent / data["predictions"], folder / data["predictions"])
    (folder / path.name).write_text(json.dumps(old, indent=2))
    assert read_record(folder / path.name) == read_record(path)
    assert read_record(folder / path.name, migrate=False).references is None  # validation judges it as submitted


def test_record_refuses_unknown_and_mistyped_fields(tmp_path):
    data = json.loads(COMMITTED[0].read_text())
    for change, message in (({"n_structures": "many"}, "n_structures"), ({"extra": 1}, "extra"),
                            ({"schema_version": 9}, "newer mlip-zoo"), ({"schema_version": "3"}, "integer")):
        path = tmp_path / "emt" / "x.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({**data, **change}))
        with pytest.raises(ResultError, match=message):
            read_record(path)


def test_exported_json_schema_is_the_models():
    """docs/result.schema.json is what contributors validate against: kept equal to the model."""
    exported = json.loads((REPO / "docs" / "result.schema.json").read_text())
    assert exported == json_schema()
    assert set(exported["required"]) >= {"model", "task", "metrics", "provenance", "failures"}
    ResultRecord.model_validate(json.loads(COMMITTED[0].read_text()))


PEAK = """
import sys
from pathlib import Path
from mlip_zoo.leaderboard.results import {call}
path = Path(sys.argv[1])
outcome = {call}(path)
assert (outcome if hasattr(outcome, "ok") else outcome.comparison).ok
# VmHWM, not ru_maxrss: ru_maxrss carries the parent's peak across fork and exec
print(int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]))
"""


def _peak_kib(call: str, path: Path) -> int:
    done = subprocess.run([sys.executable, "-c", PEAK.format(call=call), str(path)], capture_output=True, text=True,
                          check=True, cwd=TESTS)
    return int(done.stdout.split()[-1])


@pytest.mark.slow
def test_reproduce_and_validate_memory_does_not_grow_with_the_predictions(tmp_path):
    """10,000 S2EF frames of 70 atoms (a 40 MB predictions file) take no more memory to reproduce
    and validate than 1,000: scoring holds one row group and a few numbers per frame."""
    from synthetic import write_s2ef_result

    small = write_s2ef_result(tmp_path / "small", 1_000)
    large = write_s2ef_result(tmp_path / "large", 10_000)
    for call in ("recompute", "validate_result"):
        ratio = _peak_kib(call, large) / _peak_kib(call, small)
        print(f"{call}: peak RSS 10k / 1k frames = {ratio:.3f}")
        assert ratio < 1.2, call


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_arrow_allocates_from_glibc_unless_the_environment_chooses():
    """Scoring hands freed memory back with glibc's malloc_trim, which reaches Arrow's buffers
    only when Arrow allocates from glibc; ARROW_DEFAULT_MEMORY_POOL still chooses when set."""
    code = "import pyarrow as pa, mlip_zoo.evaluators.scoring; print(pa.default_memory_pool().backend_name)"
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    for chosen, expected in ((None, "system"), ("mimalloc", "mimalloc")):
        run_env = env if chosen is None else {**env, "ARROW_DEFAULT_MEMORY_POOL": chosen}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              cwd=TESTS, env=run_env)
        assert done.stdout.split()[-1] == expected
