"""Shards: the dataset cut into atom-balanced pieces, each run on a worker and written as one
checksummed Parquet file, so a rerun skips what is finished and redoes only the rest."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ase import Atoms

from mlip_zoo.errors import DatasetError
from mlip_zoo.evaluators.data import iter_records, number_records, record_id
from mlip_zoo.evaluators.plan import Plan
from mlip_zoo.evaluators.result import card_sha256
from mlip_zoo.evaluators.store import ResultStore, writing
from mlip_zoo.zoo.weights import atomic_write_text, sha256_of

log = logging.getLogger("mlip_zoo.shards")


def cut(plan: Plan) -> Iterator[tuple[int, list[Atoms]]]:
    """The dataset's records (its first ``limit``) in shards of about ``shard_atoms`` atoms, in
    dataset order: deterministic, so a rerun cuts the same shards and skips the finished ones.
    Each record is checked (the task accepts it, its id is unique) as it streams by."""
    evaluator, dataset = plan.evaluator, plan.dataset
    records = iter_records(dataset.path, trust_pickle=plan.trust_pickle)
    shard, atoms_in_shard, index, seen = [], 0, 0, SeenIds(plan)
    for i, atoms in number_records(records):  # ids of id-less records by dataset index, not shard index
        if plan.limit is not None and i >= plan.limit:
            break
        why = evaluator.accepts(atoms) or evaluator.compatible(plan.card, atoms)
        if why:
            raise DatasetError(f"{dataset.path}: record {record_id(atoms, i)}: {why}")
        seen.add(record_id(atoms, i), i)
        shard.append(atoms)
        atoms_in_shard += len(atoms)
        if atoms_in_shard >= plan.config.shard_atoms:
            yield index, shard
            shard, atoms_in_shard, index = [], 0, index + 1
    if shard:
        yield index, shard


class SeenIds:
    """The ids of the records streamed so far, to refuse a duplicate as it comes: a 64-bit hash
    an id (8 bytes, where a set of a million Python strings costs ~100 MB), the recent ones in a
    small set merged into one sorted array now and then. A hash seen before is confirmed by
    reading the dataset again up to that record, so a collision of two ids never refuses a
    dataset (they are then kept exactly)."""

    RECENT = 16_384  # ids held as Python ints before a merge into the sorted array

    def __init__(self, plan: Plan):
        self.plan = plan
        self.sorted = np.zeros(0, dtype=np.uint64)
        self.recent: set[int] = set()
        self.exact: set[str] = set()  # ids whose hash collided with another id's

    @staticmethod
    def _hash(rid: str) -> int:
        return int.from_bytes(hashlib.blake2b(rid.encode(), digest_size=8).digest(), "little")

    def add(self, rid: str, index: int) -> None:
        key = self._hash(rid)
        position = np.searchsorted(self.sorted, np.uint64(key))
        if rid in self.exact or key in self.recent or (position < self.sorted.size and self.sorted[position] == key):
            self._confirm(rid, index, key)
        self.recent.add(key)
        if len(self.recent) >= self.RECENT:
            merged = np.concatenate([self.sorted, np.fromiter(self.recent, dtype=np.uint64, count=len(self.recent))])
            merged.sort()
            self.sorted, self.recent = merged, set()

    def _confirm(self, rid: str, index: int, key: int) -> None:
        """Raise if ``rid`` is the id of an earlier record; else remember it exactly."""
        records = iter_records(self.plan.dataset.path, trust_pickle=self.plan.trust_pickle)
        for i, atoms in number_records(records):
            if i >= index:
                break
            if record_id(atoms, i) == rid:
                raise DatasetError(f"{self.plan.dataset.path}: duplicate structure id {rid!r} (record {index}), "
                                   f"first at record {i}; ids must be unique")
            if self._hash(record_id(atoms, i)) == key:  # two ids, one hash: both kept as strings
                self.exact.add(record_id(atoms, i))
        self.exact.add(rid)


def shard_dir(store: ResultStore, plan: Plan) -> Path:
    """Shards live under a fingerprint of everything the per-structure work depends on."""
    # "ids": 2 -- id-less records are named by their dataset index (shards of 1 used their own)
    card = plan.card
    key = json.dumps({"card": card_sha256(card) or card.model_dump_json(), "dataset": plan.dataset.sha256,
                      "work": plan.evaluator.work_key(), "limit": plan.limit, "ids": 2,
                      "shard_atoms": plan.config.shard_atoms}, sort_keys=True)
    return store.shards_root(card.key) / hashlib.sha256(key.encode()).hexdigest()[:16]


def write(target: Path, table: pa.Table) -> None:
    """Write a shard atomically; its checksum, written last, marks it finished."""
    with writing(target):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, target)
        atomic_write_text(_checksum_path(target), sha256_of(target) + "\n")


def _checksum_path(shard: Path) -> Path:
    return shard.with_name(shard.name + ".sha256")


def is_done(shard: Path) -> bool:
    """A finished shard: present, with a checksum that matches. Anything else is redone."""
    check = _checksum_path(shard)
    if not (shard.exists() and check.exists()):
        return False
    if check.read_text().strip() == sha256_of(shard):
        return True
    log.warning("shard %s does not match its checksum (corrupted); recomputing it", shard)
    return False
