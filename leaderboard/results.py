"""Reading and checking result files: the results store the site and PR validation stand on.

Nothing here imports, executes or unpickles anything from a submission: results are JSON, the
predictions are Parquet (plain columnar data), and metrics are recomputed with *our* evaluator
for the task the result names.

``validate_result`` checks that a result is what it claims (issue #21): it sits at
``<root>/<model>/<task>.json`` of the model and task it names, was made with that model's card as
it is now, holds the predictions file it committed to (sha256), in the task's schema, one row per
record of the dataset (its first ``limit``) in dataset order, with the dataset's own reference
values -- re-derived from the dataset by the task's own code where the dataset is at hand, else
checked against the digest recorded at eval time -- and metrics that recompute from it.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from mlip_zoo.errors import ConfigError, DatasetError, MlipZooError
from mlip_zoo.evaluators import uncertainty
from mlip_zoo.evaluators.base import Evaluator, TaskConfig, evaluator_for, load_task_config
from mlip_zoo.evaluators.result import (RESULT_SCHEMA_VERSION, ReferenceDigest, card_sha256, flatten_metrics,
                                        pending_predictions, reference_columns, reference_key)
from mlip_zoo.zoo.potential import Potential

REQUIRED = ("schema_version", "model", "task", "task_version", "dataset", "metrics", "n_structures", "n_failed",
            "failures", "predictions", "provenance")
REQUIRED_PROVENANCE = ("card_sha256", "weights_sha256", "task_config_sha256", "code_version", "packages",
                       "hardware", "started", "wall_time_s", "device")
REL_TOL = 1e-12  # recomputation runs the same code on the same numbers; allow only round-off
ROWS_PER_BATCH = 256  # predictions are streamed: memory holds a batch of rows, never the whole table
RECORDS_PER_CHUNK = 64  # dataset records re-derived at a time


class ResultError(MlipZooError, ValueError):
    """A result file is malformed, incomplete, or its numbers do not follow from its predictions."""


def result_files(results_dir: Path) -> list[Path]:
    """``<results>/<model>/<task>.json``, skipping shard and W&B folders."""
    return sorted(p for p in results_dir.glob("*/*.json") if not p.parent.name.startswith((".", "wandb")))


MAX_DEPTH = 32  # a result is ~5 levels deep (metrics by split, intervals, provenance)


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


def read_result(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultError(f"{path}: not a readable result file ({exc})") from None
    except RecursionError:  # json recurses per nesting level; a result file is a few levels deep
        raise ResultError(f"{path}: JSON nested too deeply to be a result file; it was not written by "
                          "mlip-zoo: rerun the evaluation") from None
    if not isinstance(record, dict):
        raise ResultError(f"{path}: a result file is a JSON object")
    if _depth(record) > MAX_DEPTH:  # whatever reads it next (metrics, intervals) would recurse as deep
        raise ResultError(f"{path}: JSON nested more than {MAX_DEPTH} levels deep, too deep to be a result file; "
                          "it was not written by mlip-zoo: rerun the evaluation")
    version = record.get("schema_version")
    if isinstance(version, (int, float)) and not isinstance(version, bool) and version > RESULT_SCHEMA_VERSION:
        raise ResultError(f"{path}: written by a newer mlip-zoo (result schema {version}; this one reads up to "
                          f"{RESULT_SCHEMA_VERSION}); upgrade mlip-zoo (reinstall it from a release or checkout "
                          f"that writes schema {version}) to read it")
    if "schema_version" in record and (isinstance(version, bool) or not isinstance(version, int)):
        raise ResultError(f"{path}: schema_version must be an integer (1..{RESULT_SCHEMA_VERSION}), got {version!r}; "
                          "the file was not written by mlip-zoo: rerun the evaluation")
    required = (REQUIRED + (("intervals",) if isinstance(version, int) and version >= 2 else ())
                + (("predictions_sha256", "references") if isinstance(version, int) and version >= 3 else ()))
    missing = [k for k in required if k not in record]
    if missing:
        raise ResultError(f"{path}: missing field(s) {', '.join(missing)}")
    missing = [k for k in REQUIRED_PROVENANCE if k not in record["provenance"]]
    if missing:
        raise ResultError(f"{path}: provenance is incomplete: missing {', '.join(missing)}")
    return record


def predictions_path(path: Path, record: dict[str, Any]) -> Path:
    rel = PurePosixPath(str(record["predictions"]))
    if rel.is_absolute() or ".." in rel.parts:
        raise ResultError(f"{path}: predictions must be a file beside the result, got {record['predictions']!r}")
    target = path.parent / rel
    sha = record.get("predictions_sha256")
    if _is_sha256(sha) and (pending := pending_predictions(target, sha)).is_file():
        return pending  # committed, its move not finished (see result.commit_result)
    if not target.is_file():
        raise ResultError(f"{path}: predictions file {target} is missing; every number must be recomputable")
    return target


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


@dataclass
class Comparison:
    path: Path
    claimed: dict[str, Any]
    recomputed: dict[str, Any]
    differences: list[tuple[str, Any, Any]] = field(default_factory=list)
    intervals: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.differences


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-15)
    if isinstance(a, list) and isinstance(b, list):  # an interval [lo, hi]
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _differences(claimed: dict[str, Any], again: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    claimed, again = flatten_metrics(claimed), flatten_metrics(again)
    return [(prefix + k, claimed.get(k), again.get(k)) for k in sorted(set(claimed) | set(again))
            if not _same(claimed.get(k), again.get(k))]


def task_of(path: Path, record: dict[str, Any]) -> TaskConfig:
    """The current protocol of the task a result names; an older task version is an error."""
    try:
        config = load_task_config(record["task"])
    except MlipZooError as exc:
        raise ResultError(f"{path}: {exc}") from None
    if config.version != record["task_version"]:
        raise ResultError(f"{path}: result is for {record['task']} version {record['task_version']}, this mlip-zoo "
                          f"implements version {config.version}; rerun the evaluation")
    return config


def read_predictions(path: Path, record: dict[str, Any], evaluator: Evaluator):
    """The predictions table a result points to, checked against the task's columns and the
    result's structure count."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(predictions_path(path, record))
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) on a damaged file
        raise ResultError(f"{path}: predictions file cannot be read ({exc})") from None
    missing = [c for c in evaluator.schema.names if c not in table.column_names]
    if missing:
        raise ResultError(f"{path}: predictions lack column(s) {', '.join(missing)}")
    if table.num_rows != record["n_structures"]:
        raise ResultError(f"{path}: claims {record['n_structures']} structures, predictions hold {table.num_rows}")
    return table


def recompute(path: Path) -> Comparison:
    """Recompute a result's metrics and their bootstrap intervals (with the task's current
    bootstrap settings) from its predictions file with this mlip-zoo's evaluator."""
    record = read_result(path)
    if not isinstance(record["schema_version"], int) or record["schema_version"] < 2:
        raise ResultError(f"{path}: result schema {record['schema_version']} predates confidence intervals "
                          f"(schema {RESULT_SCHEMA_VERSION}); rerun the evaluation to get them")
    config = task_of(path, record)
    evaluator = evaluator_for(config)
    try:
        if evaluator.complete_terms:  # shard by shard, as the runner summarised it: memory holds per-row terms
            metrics, intervals, bootstrap = _recompute_from_terms(path, record, evaluator)
        else:
            table = read_predictions(path, record, evaluator)
            metrics = evaluator.metrics(table)
            intervals, bootstrap = uncertainty.intervals(evaluator, table, metrics, config.bootstrap)
        recomputed = json.loads(json.dumps(metrics))
    except ResultError:
        raise
    except (ConfigError, DatasetError, ValueError, KeyError, TypeError) as exc:
        raise ResultError(f"{path}: metrics cannot be recomputed from the predictions ({exc})") from None
    diffs = (_differences(record["metrics"], recomputed)
             + _differences(record["intervals"], intervals, "intervals.")
             + _differences(record["provenance"].get("bootstrap") or {}, bootstrap, "provenance.bootstrap."))
    return Comparison(path, record["metrics"], recomputed, diffs, intervals)


def _recompute_from_terms(path: Path, record: dict[str, Any], evaluator: Evaluator):
    file = _open_predictions(path, record)
    missing = [c for c in evaluator.schema.names if c not in file.schema_arrow.names]
    if missing:
        raise ResultError(f"{path}: predictions lack column(s) {', '.join(missing)}")
    if file.metadata.num_rows != record["n_structures"]:
        raise ResultError(f"{path}: claims {record['n_structures']} structures, predictions hold "
                          f"{file.metadata.num_rows}")
    if not file.metadata.num_rows:
        raise ResultError(f"{path}: the predictions file holds no rows")
    parts, strata, settings = [], [], evaluator.config.bootstrap
    for i in range(file.num_row_groups):  # the row groups are the run's shards
        group = file.read_row_group(i)
        parts.append((evaluator.metric_terms(group), group.num_rows))
        strata.append(uncertainty.strata_labels(group, settings))
    terms = uncertainty.concat_terms(parts)
    metrics = evaluator.metrics_from_terms(terms)
    intervals, bootstrap = uncertainty.intervals(evaluator, None, metrics, settings, terms=terms,
                                                 strata=None if strata[0] is None else np.concatenate(strata))
    return metrics, intervals, bootstrap


def _open_predictions(path: Path, record: dict[str, Any]):
    import pyarrow.parquet as pq

    source = predictions_path(path, record)
    try:
        return pq.ParquetFile(source)
    except (OSError, ValueError) as exc:  # ArrowInvalid (a ValueError) on a damaged file
        raise ResultError(f"{path}: predictions file cannot be read ({exc})") from None


def read_with_predictions(path: Path):
    """``(record, task config, evaluator, predictions table)`` of a result file."""
    record = read_result(path)
    config = task_of(path, record)
    evaluator = evaluator_for(config)
    return record, config, evaluator, read_predictions(path, record, evaluator)


def compare(path_a: Path, path_b: Path) -> tuple[dict[str, Any], uncertainty.PairedComparison]:
    """Paired bootstrap of ``A - B`` for every metric of two results of one task on one dataset,
    on the structures both evaluated (matched by id). Returns (facts, comparison)."""
    record_a, config, evaluator, table_a = read_with_predictions(path_a)
    record_b, _, _, table_b = read_with_predictions(path_b)
    if record_a["task"] != record_b["task"]:
        raise ResultError(f"{path_a} is a {record_a['task']} result and {path_b} a {record_b['task']} result; "
                          "compare two results of the same task")
    if record_a["dataset"]["sha256"] != record_b["dataset"]["sha256"]:
        raise ResultError(f"{path_a} and {path_b} were evaluated on different datasets "
                          f"({record_a['dataset']['name']}/{record_a['dataset']['file']} vs "
                          f"{record_b['dataset']['name']}/{record_b['dataset']['file']}); their numbers are not paired")
    try:
        comparison = uncertainty.paired(evaluator, table_a, table_b, config.bootstrap)
    except DatasetError as exc:
        raise ResultError(f"{path_a} vs {path_b}: {exc}") from None
    facts = {"a": str(path_a), "b": str(path_b), "model_a": record_a["model"], "model_b": record_b["model"],
             "task": config.key, "task_version": config.version, "dataset": record_a["dataset"]["name"],
             "n_common": comparison.n, "n_a": table_a.num_rows, "n_b": table_b.num_rows,
             "bootstrap": uncertainty.record_of(config.bootstrap)}
    return facts, comparison


# ---------------------------------------------------------------------------------------------
# Is a result what it claims? (issue #21)


@dataclass
class Validation:
    comparison: Comparison
    references: str  # how the reference columns were checked, for the report


def validate_result(path: Path, *, cards: Path | None = None, datasets: Sequence[Path] = ()) -> Validation:
    """Every check of a submitted result (see the module docstring); raises ResultError naming the
    file, field or structure id and the fix. ``cards``: the folder the result's model card is
    read from (default: the installed cards); ``datasets``: files to re-derive references from,
    matched to the result by sha256 (the task's embedded dataset always is)."""
    record = read_result(path)
    model, task = record["model"], record["task"]
    if (path.parent.name, path.stem) != (model, task) or record["predictions"] != f"{task}.parquet":
        raise ResultError(f"{path}: a result of model {model!r} on task {task!r} is filed as <results>/{model}/{task}.json "
                          f"with predictions {task}.parquet beside it; this one is {path.parent.name}/{path.name} with "
                          f"predictions {record['predictions']!r}: fix the location or the model/task fields")
    config = task_of(path, record)
    evaluator = evaluator_for(config)
    card = _check_card(path, record, cards)
    source = predictions_path(path, record)
    if record["schema_version"] >= 3:
        from mlip_zoo.zoo.weights import sha256_of

        want, got = record["predictions_sha256"], sha256_of(source)
        if got != want:
            raise ResultError(f"{path}: predictions file {source.name} has sha256 {got}, the result committed to "
                              f"{want}: a torn pair (a write interrupted between them, or a file replaced); rerun the "
                              "evaluation")
    file = _open_predictions(path, record)
    _check_schema(path, source, file.schema_arrow, evaluator)
    if file.metadata.num_rows != record["n_structures"] or record["dataset"].get("n") != record["n_structures"]:
        raise ResultError(f"{path}: n_structures {record['n_structures']} and dataset.n {record['dataset'].get('n')} "
                          f"must both be the {file.metadata.num_rows} rows of {source.name}")
    columns = reference_columns(evaluator)
    digest = ReferenceDigest(columns)
    rows = _stream_rows(file, columns, digest)
    dataset = _dataset_of(path, record, config, datasets)
    if dataset is not None:
        failures = _rederive(path, record, evaluator, columns, dataset, rows, card.functional)
        how = f"re-derived from {dataset.path.name}"
    elif record["schema_version"] >= 3:
        failures = [{"id": r["id"], "reason": r["reason"]} for r in rows if r["status"] != "ok"]
        how = "checked against the digest recorded at eval time (dataset not at hand)"
    else:
        raise ResultError(f"{path}: its dataset {record['dataset'].get('name')} (sha256 {record['dataset'].get('sha256')}) "
                          f"is not at hand and the result (schema {record['schema_version']}) records no digest of its "
                          "references, so they cannot be checked; rerun the evaluation, or pass the dataset (--dataset)")
    if record["schema_version"] >= 3 and digest.record() != record["references"]:
        raise ResultError(f"{path}: the reference columns of {source.name} ({', '.join(columns)}) do not match the "
                          "digest `references` recorded at eval time: they were changed after the run; rerun the evaluation")
    if failures != record["failures"] or record["n_failed"] != len(failures):
        listed = {f.get("id") for f in record["failures"] if isinstance(f, dict)}
        odd = sorted(listed ^ {f["id"] for f in failures})[:3]
        raise ResultError(f"{path}: failures/n_failed ({record['n_failed']}) are not the {len(failures)} failed rows of "
                          f"{source.name} (ids in one but not the other: {', '.join(map(str, odd)) or 'none; the order or reasons differ'})")
    comparison = recompute(path)
    return Validation(comparison, how)


def _check_card(path: Path, record: dict[str, Any], cards: Path | None):
    """The result was made with the card of the model it names, as that card is now; returns the card."""
    from mlip_zoo.zoo.card import get_card, read_card

    key = record["model"]
    try:
        card = read_card(cards / f"{key}.yaml") if cards is not None else get_card(key)
    except MlipZooError as exc:
        raise ResultError(f"{path}: model {key!r} has no readable card ({exc}); submit its card with the result") from None
    recorded, actual = record["provenance"]["card_sha256"], card_sha256(card)
    if recorded != actual:
        raise ResultError(f"{path}: provenance.card_sha256 {recorded} is not the sha256 of {key}'s card {card.path} "
                          f"({actual}): the result was made with another card or model; rerun it with this card")
    weights = record["provenance"]["weights_sha256"]
    pinned = {wf.filename: wf.sha256 for wf in card.weight_files}
    if not isinstance(weights, dict) or set(weights) != set(pinned) or any(
            sha and weights[name] != sha for name, sha in pinned.items()):
        raise ResultError(f"{path}: provenance.weights_sha256 {weights} does not match the weights of {key}'s card "
                          f"({pinned}); rerun the evaluation with this card")
    return card


def _check_schema(path: Path, source: Path, schema, evaluator: Evaluator) -> None:
    problems = [f"{f.name} is missing" if f.name not in schema.names else
                f"{f.name} is {schema.field(f.name).type}, not {f.type}"
                for f in evaluator.schema if f.name not in schema.names or not schema.field(f.name).type.equals(f.type)]
    problems += [f"{name} is not a column of the task" for name in schema.names if name not in evaluator.schema.names]
    if problems:
        raise ResultError(f"{path}: {source.name} does not follow the {evaluator.key} predictions schema: "
                          f"{'; '.join(problems)}; predictions are written by `mlipzoo eval`, rerun it")


def _stream_rows(file, columns: tuple[str, ...], digest: ReferenceDigest) -> Iterator[dict[str, Any]]:
    """The rows' status, reason and reference columns, a batch at a time, hashing them on the way."""
    import pyarrow as pa

    wanted = list(dict.fromkeys(["status", "reason", *columns]))
    for batch in file.iter_batches(batch_size=ROWS_PER_BATCH, columns=wanted):
        table = pa.Table.from_batches([batch])
        digest.update(table)
        yield from table.to_pylist()


@functools.lru_cache(maxsize=16)
def _embedded(name: str, file: str):
    from mlip_zoo.evaluators.data import resolve_dataset

    try:
        return resolve_dataset(name, file)
    except DatasetError:
        return None


@functools.lru_cache(maxsize=16)
def _given(path: Path):
    from mlip_zoo.evaluators.data import Dataset, dataset_sha256

    return Dataset(name=path.name, path=path.resolve(), sha256=dataset_sha256(path))


def _dataset_of(path: Path, record: dict[str, Any], config: TaskConfig, datasets: Sequence[Path]):
    """The dataset the result was evaluated on, when it is at hand (matched by sha256), else None."""
    claimed = record["dataset"]
    for given in datasets:
        if _given(Path(given)).sha256 == claimed.get("sha256"):
            return _given(Path(given))
    embedded = _embedded(config.dataset, config.dataset_file)
    if embedded is None:
        return None
    if embedded.sha256 == claimed.get("sha256"):
        return embedded
    if (claimed.get("name"), claimed.get("file")) == (embedded.name, embedded.path.name):
        raise ResultError(f"{path}: dataset claims to be the embedded {embedded.name} ({embedded.path.name}) but its "
                          f"sha256 {claimed.get('sha256')} is not that file's ({embedded.sha256}); rerun the evaluation")
    return None


class _Stub(Potential):
    """A model that predicts nothing. Running a task with it yields what the task takes from the
    dataset, through the task's own code: the reference columns, re-derived. ``fail``: every
    prediction raises (the rows of a failed structure); else zeros (which relax in no steps)."""

    def __init__(self, fail: bool, functional: str):
        from mlip_zoo.zoo.card import ModelCard

        # The result's functional: a task may pick its reference by it (diatomics: r2SCAN curves).
        super().__init__(ModelCard(key="reference-stub", name="reference stub", version="1", family="emt",
                                   license="MIT", targets="EFS", functional=functional))
        self.fail = fail

    def _predict_one(self, atoms, stress: bool):
        if self.fail:
            raise RuntimeError("the reference stub predicts nothing")
        return 0.0, np.zeros((len(atoms), 3)), np.zeros(6) if stress else None


def _reference_rows(evaluator: Evaluator, potential: Potential, records: list, columns: tuple[str, ...]):
    import pyarrow as pa

    rows = evaluator.checked_run(potential, records)  # as the runner ran it
    return pa.Table.from_pylist(rows, schema=evaluator.schema).select(list(columns)).to_pylist()


def _rederive(path: Path, record: dict[str, Any], evaluator: Evaluator, columns: tuple[str, ...], dataset,
              rows: Iterator[dict[str, Any]], functional: str) -> list[dict[str, Any]]:
    """Walk the dataset (its first ``limit`` records) and the predictions together: one row per
    record, same id, same reference values; returns the failed rows' ids and reasons. A failed
    row is compared with the task's row of a failed prediction, an ok one with that of a model
    predicting zeros (run only where the failed row lacks a reference value)."""
    from itertools import islice

    from mlip_zoo.evaluators.data import iter_records, number_records

    limit = record["dataset"].get("limit")
    scope = f"its first {limit} records" if limit is not None else "every record"
    failing, zeros = _Stub(fail=True, functional=functional), _Stub(fail=False, functional=functional)
    records = islice(number_records(iter_records(dataset.path)), limit)
    failures: list[dict[str, Any]] = []
    try:
        while chunk := list(islice(records, RECORDS_PER_CHUNK)):
            submitted = list(islice(rows, len(chunk)))
            structures = [atoms for _, atoms in chunk]
            expected = _reference_rows(evaluator, failing, structures, columns)
            redo = [j for j, row in enumerate(submitted)
                    if row["status"] == "ok" and any(expected[j][c] is None for c in columns)]
            if redo:
                for j, row in zip(redo, _reference_rows(evaluator, zeros, [structures[j] for j in redo], columns),
                                  strict=True):
                    expected[j] = row
            for (index, _), row, want in zip(chunk, submitted, expected):  # the rows there are, then the gap
                if row["id"] != want["id"]:
                    raise ResultError(f"{path}: predictions row {index} is structure {row['id']!r}, record {index} of "
                                      f"{dataset.path.name} is {want['id']!r}: rows are the dataset's records in its order; "
                                      "rerun the evaluation")
                differ = [c for c in columns if reference_key(row, (c,)) != reference_key(want, (c,))]
                if differ:
                    raise ResultError(f"{path}: structure {row['id']!r}: {', '.join(differ)} differ(s) from what "
                                      f"{dataset.path.name} gives: reference columns are the dataset's labels; rerun "
                                      "the evaluation")
                if row["status"] != "ok":
                    failures.append({"id": row["id"], "reason": row["reason"]})
            if len(submitted) < len(chunk):
                index = chunk[len(submitted)][0]
                raise ResultError(f"{path}: the predictions end at row {index}, before record {index} of {dataset.path.name}; "
                                  f"a result holds a row for {scope} of its dataset (a failure is a row with status "
                                  "failed), never a selection; rerun the evaluation")
    except MlipZooError as exc:
        if isinstance(exc, ResultError):
            raise
        raise ResultError(f"{path}: cannot re-derive the references from {dataset.path}: {exc}") from None
    extra = next(rows, None)
    if extra is not None:
        raise ResultError(f"{path}: the predictions hold structure {extra['id']!r} and more beyond {scope} of "
                          f"{dataset.path.name}; rerun the evaluation")
    return failures
