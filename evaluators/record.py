"""The result record: the one definition of ``<results>/<model>/<task>.json``.

Everything that writes or reads a result goes through ``ResultRecord``: the runner builds it, the
store writes and reads it, validation, the site, the W&B sink and the CLI read its fields. Its
JSON Schema (``mlipzoo results schema``) is what contributors and the site can check against.

Versions (``schema_version``):

1. metrics, failures, predictions file and provenance;
2. every metric carries a bootstrap interval (``intervals`` mirrors ``metrics``) and
   ``provenance.bootstrap`` records how they were drawn;
3. ``predictions_sha256`` (the predictions file the record commits to) and ``references``
   (``{columns, sha256}``, a digest of every row's id and reference values, see
   evaluators/result.py ``ReferenceDigest``).

A schema-2 record is migrated on read (``migrate``): both new fields are computed from its
predictions file, which is what a schema-3 run would have recorded for the same file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer

RESULT_SCHEMA_VERSION = 3
MAX_DEPTH = 32  # a result is ~5 levels deep (metrics by split, intervals, provenance)


class _Part(BaseModel):
    """A part of the record: unknown fields are refused (a typo never passes silently), and
    optional fields that are unset are left out of the file rather than written as null."""

    model_config = ConfigDict(extra="forbid")

    @model_serializer(mode="wrap")
    def _drop_unset_optionals(self, handler):
        data = handler(self)
        for name, spec in type(self).model_fields.items():
            if not spec.is_required() and spec.default is None and data.get(name) is None:
                data.pop(name, None)
        return data


class DatasetRef(_Part):
    name: str
    file: str
    sha256: str
    n: int  # structures evaluated (the dataset's first ``limit``, or all)
    limit: int | None
    labelled_by: str | None = None  # the model that made the labels: a pipeline check, never ranked


class Failure(_Part):
    id: str
    reason: str | None


class References(_Part):
    columns: list[str]
    sha256: str


class Provenance(_Part):
    card_sha256: str | None
    weights_sha256: dict[str, str]
    task_config_sha256: str
    code_version: str
    packages: dict[str, str]
    hardware: dict[str, Any]
    started: str
    wall_time_s: float
    device: str
    bootstrap: dict[str, Any] | None = None
    task_inputs: dict[str, Any] | None = None  # Evaluator.provenance(): inputs besides the dataset
    environment: dict[str, Any] | None = None  # the isolated model environment it ran in
    # Constants fitted to the predictions that metrics depend on (Evaluator.fitted; OC20:
    # ``alignment``: method, calibration rule and ids, per-element coefficients in eV/atom);
    # `mlipzoo reproduce` refits them and compares.
    fitted: dict[str, Any] | None = None


class ResultRecord(_Part):
    """One model on one task: its metrics with intervals, what it was run on and with, and the
    predictions file every number recomputes from."""

    schema_version: int = Field(RESULT_SCHEMA_VERSION, ge=1, le=RESULT_SCHEMA_VERSION)
    model: str
    task: str
    task_version: str
    dataset: DatasetRef
    metrics: dict[str, Any]
    intervals: dict[str, Any] = {}
    n_structures: int
    n_failed: int
    failures: list[Failure]
    predictions: str  # file name beside the record
    predictions_sha256: str | None = None
    references: References | None = None
    provenance: Provenance

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, allow_nan=False) + "\n"

    def failure_dicts(self) -> list[dict[str, Any]]:
        return [f.model_dump() for f in self.failures]


def json_schema() -> dict[str, Any]:
    """The record's JSON Schema, for contributors' tools and the site."""
    return ResultRecord.model_json_schema()


class RecordError(ValueError):
    """Raised by ``parse_record``; the store turns it into a ResultError naming the file."""


def _depth(value: Any) -> int:
    """How deeply lists and objects nest, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_record(text: str, predictions: Path | None = None) -> ResultRecord:
    """A record from the text of a result file, migrated to the current schema. ``predictions``:
    the file a schema-2 record's new fields are computed from (see ``migrate``)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"not a readable result file ({exc})") from None
    except RecursionError:  # json recurses per nesting level; a result file is a few levels deep
        raise RecordError("JSON nested too deeply to be a result file; it was not written by mlip-zoo: "
                          "rerun the evaluation") from None
    if not isinstance(data, dict):
        raise RecordError("a result file is a JSON object")
    if _depth(data) > MAX_DEPTH:  # whatever reads it next (metrics, intervals) would recurse as deep
        raise RecordError(f"JSON nested more than {MAX_DEPTH} levels deep, too deep to be a result file; it was not "
                          "written by mlip-zoo: rerun the evaluation")
    version = data.get("schema_version", 1)
    if isinstance(version, (int, float)) and not isinstance(version, bool) and version > RESULT_SCHEMA_VERSION:
        raise RecordError(f"written by a newer mlip-zoo (result schema {version}; this one reads up to "
                          f"{RESULT_SCHEMA_VERSION}); upgrade mlip-zoo (reinstall it from a release or checkout that "
                          f"writes schema {version}) to read it")
    if isinstance(version, bool) or not isinstance(version, int):
        raise RecordError(f"schema_version must be an integer (1..{RESULT_SCHEMA_VERSION}), got {version!r}; the file "
                          "was not written by mlip-zoo: rerun the evaluation")
    required = (["intervals"] if version >= 2 else []) + (["predictions_sha256", "references"] if version >= 3 else [])
    missing = [k for k in required if k not in data]
    if missing:
        raise RecordError(f"missing field(s) {', '.join(missing)}")
    try:
        record = ResultRecord.model_validate(data)
    except ValidationError as exc:
        raise RecordError(_describe(exc)) from None
    if version == 2 and predictions is not None:
        record = migrate(record, predictions)
    return record


def _describe(exc: ValidationError) -> str:
    """Pydantic's errors as a reader wants them: which fields are missing, which are wrong."""
    missing: dict[str, list[str]] = {}
    wrong = []
    for error in exc.errors():
        where = ".".join(map(str, error["loc"]))
        if error["type"] == "missing":
            *parent, leaf = map(str, error["loc"])
            missing.setdefault(".".join(parent), []).append(leaf)
        else:
            wrong.append(f"{where or 'record'}: {error['msg']}")
    parts = [f"missing field(s) {', '.join(fields)}" if not parent else f"{parent} is incomplete: missing "
             f"{', '.join(fields)}" for parent, fields in missing.items()]
    return "; ".join([*parts, *wrong[:5]]) + "; it was not written by this mlip-zoo: rerun the evaluation"


def migrate(record: ResultRecord, predictions: Path) -> ResultRecord:
    """A schema-2 record as schema 3: ``predictions_sha256`` and ``references`` computed from its
    predictions file (the digest over the task's reference columns, as the runner computes it)."""
    import pyarrow.parquet as pq

    from mlip_zoo.evaluators.base import evaluator_for
    from mlip_zoo.evaluators.result import ReferenceDigest, reference_columns
    from mlip_zoo.zoo.weights import sha256_of

    digest = ReferenceDigest(reference_columns(evaluator_for(record.task)))
    file = pq.ParquetFile(predictions)
    for group in range(file.num_row_groups):  # one shard at a time
        digest.update(file.read_row_group(group, columns=list(digest.columns)))
    return record.model_copy(update={"schema_version": 3, "predictions_sha256": sha256_of(predictions),
                                     "references": References(**digest.record())})
