"""Where results live: ``ResultStore(root)`` owns the layout

    <root>/<model>/<task>.json        the ResultRecord
    <root>/<model>/<task>.parquet     its per-structure predictions
    <root>/<model>/<task>.verified.json  the record of a re-run of a sample (``mlipzoo verify``)
    <root>/<model>/.shards/<key>/     finished shards of runs (resumable)
    <root>/<model>/.<task>.lock       held while one evaluation writes that pair

and is the one place that builds those paths, writes a pair atomically and reads it back. It
sits beside the record (evaluators/) rather than in leaderboard/, so the runner that writes
results and the leaderboard that reads them both use it while imports stay one way
(zoo <- evaluators <- leaderboard <- cli).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mlip_zoo.errors import MlipZooError, OutputError
from mlip_zoo.evaluators.record import RecordError, ResultRecord, parse_record
from mlip_zoo.zoo.weights import atomic_write_text


class ResultError(MlipZooError, ValueError):
    """A result file is malformed, incomplete, or its numbers do not follow from its predictions."""


@contextlib.contextmanager
def writing(path: Path):
    """Turn a failed write into an error that names the file and the way out."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}. Free disk space or choose a writable "
                          "--out; finished shards are kept and a rerun resumes from them") from exc


# Rows per row group of a predictions file. Readers (reproduce, validate, the site) take one group
# at a time and hold the file's footer, ~11 KB in memory per group: one group per shard made the
# footer grow with the dataset (76 MB at 200k S2EF frames), groups of ~1,000 rows keep it small.
ROW_GROUP_ROWS = 1024


class PredictionsWriter:
    """Shards (tables of one schema) joined into one predictions file, in row groups of at least
    ``ROW_GROUP_ROWS`` rows (the last may be smaller); close() writes what is pending."""

    def __init__(self, path: Path):
        self.path, self._writer, self._pending, self._rows = path, None, [], 0

    def write(self, table) -> None:
        self._pending.append(table)
        self._rows += table.num_rows
        if self._rows >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._pending:
            return
        table = pa.concat_tables(self._pending, promote_options="none")
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table, row_group_size=table.num_rows)
        self._pending, self._rows = [], 0

    def close(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> PredictionsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class StoredResult:
    """A record read from the store, with the file it was read from."""

    path: Path
    record: ResultRecord

    @property
    def predictions(self) -> Path:
        return predictions_file(self.path, self.record)


class ResultStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    def model_dir(self, model: str) -> Path:
        return self.root / model

    def result_path(self, model: str, task: str) -> Path:
        return self.root / model / f"{task}.json"

    def verification_path(self, model: str, task: str) -> Path:
        return verification_file(self.result_path(model, task))

    def shards_root(self, model: str) -> Path:
        return self.root / model / ".shards"

    def lock(self, model: str, task: str):
        """One evaluation at a time writes ``model`` x ``task`` (see ``output_lock``)."""
        return output_lock(self.model_dir(model), task)

    def commit(self, record: ResultRecord, predictions: Path) -> Path:
        """Write a record and its predictions (a finished file, moved into place) as one."""
        path = self.result_path(record.model, record.task)
        with writing(path):
            commit_result(path, record, predictions)
        return path

    def files(self) -> list[Path]:
        """``<root>/<model>/<task>.json``, skipping shard and W&B folders."""
        return result_files(self.root)

    def read(self, model: str, task: str) -> StoredResult:
        return read_stored(self.result_path(model, task))


VERIFIED_SUFFIX = ".verified.json"


def result_files(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).glob("*/*.json")
                  if not p.parent.name.startswith((".", "wandb")) and not is_verification_file(p))


def verification_file(result: Path) -> Path:
    """The sidecar recording the verification of the result at ``result``: ``<task>.verified.json``."""
    return result.with_name(result.stem + VERIFIED_SUFFIX)


def is_verification_file(path: Path) -> bool:
    return path.name.endswith(VERIFIED_SUFFIX)


def result_of_verification(sidecar: Path) -> Path:
    """The result file a sidecar ``<task>.verified.json`` belongs to."""
    return sidecar.with_name(sidecar.name[: -len(VERIFIED_SUFFIX)] + ".json")


def read_record(path: Path, *, migrate: bool = True) -> ResultRecord:
    """The record at ``path``; a schema-2 record is migrated (``record.migrate``) unless ``migrate``
    is False (validation judges a file as it was submitted)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ResultError(f"{path}: not a readable result file ({exc})") from None
    predictions = None
    try:
        if migrate:
            predictions = _migration_source(path, text)
        return parse_record(text, predictions)
    except RecordError as exc:
        raise ResultError(f"{path}: {exc}") from None
    except (OSError, ValueError) as exc:  # the schema-2 migration reads the predictions
        raise ResultError(f"{path}: cannot migrate the schema-2 record from its predictions ({exc})") from None


def _migration_source(path: Path, text: str) -> Path | None:
    import json

    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None  # parse_record names the problem
    if not isinstance(data, dict) or data.get("schema_version") != 2 or not isinstance(data.get("predictions"), str):
        return None
    target = path.parent / data["predictions"]
    return target if _beside(data["predictions"]) and target.is_file() else None


def read_stored(path: Path) -> StoredResult:
    return StoredResult(path, read_record(path))


def _beside(name: str) -> bool:
    rel = PurePosixPath(name)
    return not (rel.is_absolute() or ".." in rel.parts or len(rel.parts) != 1)


def pending_predictions(target: Path, sha256: str) -> Path:
    """Where predictions with this sha256 wait to become ``target`` (see ``commit_result``)."""
    return target.with_name(f".{target.name}.{sha256}")


def predictions_file(path: Path, record: ResultRecord) -> Path:
    """The predictions file of the record at ``path``: beside it, or still at its pending name
    when a write was interrupted after its commit point."""
    if not _beside(record.predictions):
        raise ResultError(f"{path}: predictions must be a file beside the result, got {record.predictions!r}")
    target = path.parent / record.predictions
    sha = record.predictions_sha256
    if sha and re.fullmatch(r"[0-9a-f]{64}", sha) and (pending := pending_predictions(target, sha)).is_file():
        return pending
    if not target.is_file():
        raise ResultError(f"{path}: predictions file {target} is missing; every number must be recomputable")
    return target


def commit_result(path: Path, record: ResultRecord, predictions: Path) -> None:
    """Write a result and its predictions as one: ``predictions`` (a finished file) is first moved
    to its pending name, then the record, which names the predictions' sha256, replaces ``path``:
    that replace is the commit point. Last, the pending file becomes ``record.predictions``.
    Interrupted before the commit, the old pair stands; after it, readers take the pending file
    (``predictions_file``) and the next write finishes the move."""
    target = path.parent / record.predictions
    finish_commit(path)
    pending = pending_predictions(target, record.predictions_sha256)
    os.replace(predictions, pending)
    write_record(path, record)
    os.replace(pending, target)
    for stale in path.parent.glob(f".{target.name}.*"):  # pending files of writes that never committed
        if re.fullmatch(r"[0-9a-f]{64}", stale.name.rsplit(".", 1)[1]):
            stale.unlink(missing_ok=True)


def write_record(path: Path, record: ResultRecord) -> None:
    atomic_write_text(path, record.to_json())


def finish_commit(path: Path) -> None:
    """Finish the move of a committed record's predictions (a write interrupted after its commit)."""
    try:
        record = parse_record(path.read_text())
    except (OSError, RecordError):
        return  # no readable committed record here: nothing to finish
    if record.predictions_sha256 and _beside(record.predictions):
        pending = pending_predictions(path.parent / record.predictions, record.predictions_sha256)
        if pending.is_file():
            os.replace(pending, pending.parent / record.predictions)


@contextlib.contextmanager
def output_lock(model_dir: Path, task: str):
    """Hold ``<model_dir>/.<task>.lock`` (an flock, released if the process dies) while one
    evaluation writes that model's shards and result; a second one is refused, naming the holder.
    The file holds the holder's pid and host, and is removed on release. (flock is per machine:
    on a network filesystem shared by nodes it may not exclude a run on another node.)"""
    import fcntl
    import socket

    path = model_dir / f".{task}.lock"
    while True:
        with writing(path):
            model_dir.mkdir(parents=True, exist_ok=True)
            f = open(path, "a+")  # noqa: SIM115 (closed below)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise OutputError(f"{path}: another evaluation of {model_dir.name} on {task} is writing to {model_dir.parent} "
                              f"({holder}); wait for it to finish (or stop it), or choose another --out") from None
        try:  # the file we locked may have been removed by a holder releasing it: then lock the new one
            if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still holding it (see the inode check above)
        f.close()
