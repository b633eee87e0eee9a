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
from pathlib import Path
from typing import Any

import numpy as np

from mlip_zoo.errors import ConfigError, DatasetError, MlipZooError
from mlip_zoo.evaluators import scoring, uncertainty
from mlip_zoo.evaluators.base import Evaluator, TaskConfig, evaluator_for, load_task_config
from mlip_zoo.evaluators.record import ResultRecord
from mlip_zoo.evaluators.result import ReferenceDigest, card_sha256, flatten_metrics, reference_columns
from mlip_zoo.evaluators.store import ResultError, StoredResult, read_record, read_stored
from mlip_zoo.zoo.potential import Potential

__all__ = ["ResultError", "compare", "recompute", "validate_result"]

# Reference values re-derived from the dataset: labels read from its files come back exact; values
# the task computes from a structure (ood-shift's Laplacian spectra) carry another CPU's round-off
# (measured 4e-14 relative between AVX-512 and AVX2 machines).
REFERENCE_REL_TOL = 1e-10
ROWS_PER_BATCH = 256  # predictions are streamed: memory holds a batch of rows, never the whole table
RECORDS_PER_CHUNK = 64  # dataset records re-derived at a time


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


def _same(a: Any, b: Any, rel_tol: float) -> bool:
    """Equal up to round-off: numbers within ``rel_tol`` (NaN equals NaN), lists element-wise."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-15) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):  # an interval [lo, hi], a reference vector
        return len(a) == len(b) and all(_same(x, y, rel_tol) for x, y in zip(a, b, strict=True))
    return a == b


def _differences(claimed: dict[str, Any], again: dict[str, Any], rel_tol: float,
                 prefix: str = "") -> list[tuple[str, Any, Any]]:
    claimed, again = flatten_metrics(claimed), flatten_metrics(again)
    return [(prefix + k, claimed.get(k), again.get(k)) for k in sorted(set(claimed) | set(again))
            if not _same(claimed.get(k), again.get(k), rel_tol)]


def task_of(path: Path, record: ResultRecord) -> TaskConfig:
    """The current protocol of the task a result names; an older task version is an error."""
    try:
        config = load_task_config(record.task)
    except MlipZooError as exc:
        raise ResultError(f"{path}: {exc}") from None
    if config.version != record.task_version:
        raise ResultError(f"{path}: result is for {record.task} version {record.task_version}, this mlip-zoo "
                          f"implements version {config.version}; rerun the evaluation")
    try:
        return evaluator_for(config).for_record(record)
    except (MlipZooError, ValueError, KeyError, TypeError) as exc:
        raise ResultError(f"{path}: provenance does not say how it was scored ({exc}); rerun the evaluation") from None


def _open_predictions(stored: StoredResult, evaluator: Evaluator):
    """The predictions file of a result, opened (not read), checked against the task's columns
    and the result's structure count."""
    import pyarrow.parquet as pq

    path, record = stored.path, stored.record
    try:
        file = pq.ParquetFile(stored.predictions)
    except (OSError, ValueError) as exc:  # ArrowInvalid (a ValueError) on a damaged file
        raise ResultError(f"{path}: predictions file cannot be read ({exc})") from None
    missing = [c for c in evaluator.schema.names if c not in file.schema_arrow.names]
    if missing:
        raise ResultError(f"{path}: predictions lack column(s) {', '.join(missing)}")
    if file.metadata.num_rows != record.n_structures:
        raise ResultError(f"{path}: claims {record.n_structures} structures, predictions hold {file.metadata.num_rows}")
    return file


def reduced_rows(stored: StoredResult, evaluator: Evaluator):
    """A result's predictions as its task's reduced rows (evaluators/scoring.py), read one row
    group at a time: what rankings and paired comparisons resample."""
    _open_predictions(stored, evaluator)
    try:
        return scoring.reduced_predictions(evaluator, stored.predictions)
    except (OSError, ValueError) as exc:
        raise ResultError(f"{stored.path}: predictions file cannot be read ({exc})") from None


def recompute(path: Path) -> Comparison:
    """Recompute a result's metrics and their bootstrap intervals (with the task's current
    bootstrap settings) from its predictions file with this mlip-zoo's evaluator, through the one
    scoring path the runner used, a row group (a shard) at a time."""
    stored = read_stored(path)
    record = stored.record
    if record.schema_version < 2:
        raise ResultError(f"{path}: result schema {record.schema_version} predates confidence intervals; rerun the "
                          "evaluation to get them")
    config = task_of(path, record)
    evaluator = evaluator_for(config)
    # The file's metadata (~350 bytes a row group) is dropped before scoring opens it again.
    if not _open_predictions(stored, evaluator).metadata.num_rows:
        raise ResultError(f"{path}: the predictions file holds no rows")
    try:
        scored = scoring.score(evaluator, scoring.row_groups(stored.predictions), config.bootstrap)
        recomputed = json.loads(json.dumps(scored.metrics))
    except (ConfigError, DatasetError, ValueError, KeyError, TypeError, OSError) as exc:
        raise ResultError(f"{path}: metrics cannot be recomputed from the predictions ({exc})") from None
    tol = config.recompute_rel_tol
    diffs = (_differences(record.metrics, recomputed, tol)
             + _differences(record.intervals, scored.intervals, tol, "intervals.")
             + _differences(record.provenance.bootstrap or {}, scored.bootstrap, tol, "provenance.bootstrap.")
             + _differences(record.provenance.fitted or {}, json.loads(json.dumps(scored.fitted or {})), tol,
                            "provenance.fitted."))
    return Comparison(path, record.metrics, recomputed, diffs, scored.intervals)


def compare(path_a: Path, path_b: Path) -> tuple[dict[str, Any], uncertainty.PairedComparison]:
    """Paired bootstrap of ``A - B`` for every metric of two results of one task on one dataset,
    on the structures both evaluated (matched by id). Returns (facts, comparison)."""
    a, b = read_stored(path_a), read_stored(path_b)
    if a.record.task != b.record.task:
        raise ResultError(f"{path_a} is a {a.record.task} result and {path_b} a {b.record.task} result; "
                          "compare two results of the same task")
    da, db = a.record.dataset, b.record.dataset
    if da.sha256 != db.sha256:
        raise ResultError(f"{path_a} and {path_b} were evaluated on different datasets "
                          f"({da.name}/{da.file} vs {db.name}/{db.file}); their numbers are not paired")
    config = task_of(path_a, a.record)
    task_of(path_b, b.record)
    evaluator = evaluator_for(config)
    rows_a, rows_b = reduced_rows(a, evaluator), reduced_rows(b, evaluator)
    try:
        comparison = uncertainty.paired(evaluator, rows_a, rows_b, config.bootstrap)
    except DatasetError as exc:
        raise ResultError(f"{path_a} vs {path_b}: {exc}") from None
    facts = {"a": str(path_a), "b": str(path_b), "model_a": a.record.model, "model_b": b.record.model,
             "task": config.key, "task_version": config.version, "dataset": da.name,
             "n_common": comparison.n, "n_a": rows_a.num_rows, "n_b": rows_b.num_rows,
             "bootstrap": uncertainty.record_of(config.bootstrap)}
    return facts, comparison


# ---------------------------------------------------------------------------------------------
# Is a result what it claims? (issue #21)


@dataclass
class Validation:
    comparison: Comparison
    references: str  # how the reference columns were checked, for the report
    record: ResultRecord  # as submitted


def validate_result(path: Path, *, cards: Path | None = None, datasets: Sequence[Path] = ()) -> Validation:
    """Every check of a submitted result (see the module docstring); raises ResultError naming the
    file, field or structure id and the fix. ``cards``: the folder the result's model card is
    read from (default: the installed cards); ``datasets``: files to re-derive references from,
    matched to the result by sha256 (the task's embedded dataset always is)."""
    record = read_record(path, migrate=False)  # judged as submitted: a schema-2 file has no digest to trust
    stored = StoredResult(path, record)
    model, task = record.model, record.task
    if (path.parent.name, path.stem) != (model, task) or record.predictions != f"{task}.parquet":
        raise ResultError(f"{path}: a result of model {model!r} on task {task!r} is filed as <results>/{model}/{task}.json "
                          f"with predictions {task}.parquet beside it; this one is {path.parent.name}/{path.name} with "
                          f"predictions {record.predictions!r}: fix the location or the model/task fields")
    config = task_of(path, record)
    evaluator = evaluator_for(config)
    card = check_card(path, record, cards)
    source = stored.predictions
    if record.schema_version >= 3:
        from mlip_zoo.zoo.weights import sha256_of

        want, got = record.predictions_sha256, sha256_of(source)
        if got != want:
            raise ResultError(f"{path}: predictions file {source.name} has sha256 {got}, the result committed to "
                              f"{want}: a torn pair (a write interrupted between them, or a file replaced); rerun the "
                              "evaluation")
    import pyarrow.parquet as pq

    try:
        _check_schema(path, source, pq.read_schema(source), evaluator)  # every problem at once, named
    except (OSError, ValueError) as exc:  # ArrowInvalid (a ValueError) on a damaged file
        raise ResultError(f"{path}: predictions file cannot be read ({exc})") from None
    file = _open_predictions(stored, evaluator)
    if record.dataset.n != record.n_structures:
        raise ResultError(f"{path}: n_structures {record.n_structures} and dataset.n {record.dataset.n} "
                          f"must both be the {file.metadata.num_rows} rows of {source.name}")
    columns = reference_columns(evaluator)
    digest = ReferenceDigest(columns)
    rows = _stream_rows(file, columns, digest)
    dataset = _dataset_of(path, record, config, datasets)
    if dataset is not None:
        failures = _rederive(path, record, evaluator, columns, dataset, rows, card.functional)
        how = f"re-derived from {dataset.path.name}"
    elif record.schema_version >= 3:
        failures = [{"id": r["id"], "reason": r["reason"]} for r in rows if r["status"] != "ok"]
        how = "checked against the digest recorded at eval time (dataset not at hand)"
    else:
        raise ResultError(f"{path}: its dataset {record.dataset.name} (sha256 {record.dataset.sha256}) "
                          f"is not at hand and the result (schema {record.schema_version}) records no digest of its "
                          "references, so they cannot be checked; rerun the evaluation, or pass the dataset (--dataset)")
    if record.schema_version >= 3 and digest.record() != record.references.model_dump():
        raise ResultError(f"{path}: the reference columns of {source.name} ({', '.join(columns)}) do not match the "
                          "digest `references` recorded at eval time: they were changed after the run; rerun the evaluation")
    claimed = record.failure_dicts()
    if failures != claimed or record.n_failed != len(failures):
        odd = sorted({f["id"] for f in claimed} ^ {f["id"] for f in failures})[:3]
        raise ResultError(f"{path}: failures/n_failed ({record.n_failed}) are not the {len(failures)} failed rows of "
                          f"{source.name} (ids in one but not the other: {', '.join(map(str, odd)) or 'none; the order or reasons differ'})")
    del file, rows  # recompute opens the file again: one copy of its metadata at a time
    comparison = recompute(path)
    return Validation(comparison, how, record)


def check_card(path: Path, record: ResultRecord, cards: Path | None):
    """The result was made with the card of the model it names, as that card is now; returns the card."""
    from mlip_zoo.zoo.card import get_card, read_card

    key = record.model
    try:
        card = read_card(cards / f"{key}.yaml") if cards is not None else get_card(key)
    except MlipZooError as exc:
        raise ResultError(f"{path}: model {key!r} has no readable card ({exc}); submit its card with the result") from None
    recorded, actual = record.provenance.card_sha256, card_sha256(card)
    if recorded != actual:
        raise ResultError(f"{path}: provenance.card_sha256 {recorded} is not the sha256 of {key}'s card {card.path} "
                          f"({actual}): the result was made with another card or model; rerun it with this card")
    weights = record.provenance.weights_sha256
    pinned = {wf.filename: wf.sha256 for wf in card.weight_files}
    if set(weights) != set(pinned) or any(sha and weights[name] != sha for name, sha in pinned.items()):
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
    """The rows' status, reason and reference columns, a row group (a shard) at a time and a few
    hundred rows as Python objects at a time, hashing them on the way. (Row groups one by one:
    ``iter_batches`` may read ahead across them, holding much of the file.)"""
    wanted = list(dict.fromkeys(["status", "reason", *columns]))
    for group in range(file.num_row_groups):
        table = file.read_row_group(group, columns=wanted)
        digest.update(table)
        for start in range(0, table.num_rows, ROWS_PER_BATCH):
            yield from table.slice(start, ROWS_PER_BATCH).to_pylist()


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


def _dataset_of(path: Path, record: ResultRecord, config: TaskConfig, datasets: Sequence[Path]):
    """The dataset the result was evaluated on, when it is at hand (matched by sha256), else None."""
    claimed = record.dataset
    for given in datasets:
        if _given(Path(given)).sha256 == claimed.sha256:
            return _given(Path(given))
    embedded = _embedded(config.dataset, config.dataset_file)
    if embedded is None:
        return None
    if embedded.sha256 == claimed.sha256:
        return embedded
    if (claimed.name, claimed.file) == (embedded.name, embedded.path.name):
        raise ResultError(f"{path}: dataset claims to be the embedded {embedded.name} ({embedded.path.name}) but its "
                          f"sha256 {claimed.sha256} is not that file's ({embedded.sha256}); rerun the evaluation")
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


def _rederive(path: Path, record: ResultRecord, evaluator: Evaluator, columns: tuple[str, ...], dataset,
              rows: Iterator[dict[str, Any]], functional: str) -> list[dict[str, Any]]:
    """Walk the dataset (its first ``limit`` records) and the predictions together: one row per
    record, same id, same reference values; returns the failed rows' ids and reasons. A failed
    row is compared with the task's row of a failed prediction, an ok one with that of a model
    predicting zeros (run only where the failed row lacks a reference value)."""
    from itertools import islice

    from mlip_zoo.evaluators.data import iter_records, number_records

    limit = record.dataset.limit
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
                differ = [c for c in columns if not _same(row[c], want[c], REFERENCE_REL_TOL)]
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
