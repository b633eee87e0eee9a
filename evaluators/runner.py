"""Running one model on one task: stream the dataset, cut atom-balanced shards, run them on a Dask
cluster (an embedded LocalCluster, an existing scheduler, or SLURM through dask-jobqueue), write
each finished shard atomically as Parquet, then compute metrics with their bootstrap intervals and
write the result record.

A rerun of the same command skips finished shards, so a killed run resumes where it stopped.
The scheduler only moves (card, task, shard); each worker loads the model once and keeps it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ase import Atoms

from mlip_zoo.errors import ConfigError, DatasetError, EnvError, OutputError
from mlip_zoo.evaluators.base import Evaluator, TaskConfig, evaluator_for
from mlip_zoo.evaluators.cluster_faults import capacity, cluster_failure, keep_jobs
from mlip_zoo.evaluators.data import Dataset, iter_records, number_records, record_id, resolve_dataset
from mlip_zoo.evaluators.result import (PACKAGES, ReferenceDigest, build_result, card_sha256, commit_result,
                                        reference_columns)
from mlip_zoo.evaluators.uncertainty import concat_terms, strata_labels
from mlip_zoo.evaluators.uncertainty import intervals as metric_intervals
from mlip_zoo.zoo.card import ModelCard, get_card
from mlip_zoo.zoo.envs import Environment, ensure_environment, needs_environment
from mlip_zoo.zoo.potential import resolve_device
from mlip_zoo.zoo.weights import atomic_write_text, sha256_of


@dataclass
class RunOptions:
    out: Path = Path("results")
    dataset: Path | None = None
    device: str = "cpu"
    workers: int = 1  # 0 runs in this process, without Dask
    scheduler: str | None = None  # address of a running Dask scheduler
    cluster: str = "local"  # local | slurm
    cluster_config: Path | None = None  # YAML of dask_jobqueue.SLURMCluster keyword arguments
    limit: int | None = None
    trust_pickle: bool = False
    client: Any = field(default=None, repr=False)  # a dask Client to reuse (kept open; see cluster_client)
    env: str = "auto"  # auto | shared | isolated: where a card with `requires` runs (see zoo/envs.py)
    torch_threads: int | None = None  # per local Dask worker; default cores // workers (no oversubscription)
    env_clusters: EnvClusters | None = field(default=None, repr=False)  # isolated models' clusters, kept for a run
    progress: Callable[[int, int], None] | None = field(default=None, repr=False)  # (done, failed) deltas


# ---------------------------------------------------------------------------------------------
# Worker side: runs in Dask worker processes (or in-process with workers=0).

log = logging.getLogger("mlip_zoo.runner")
_POTENTIALS: dict[tuple[str, str, str | None], Any] = {}


def _potential(card: ModelCard, device: str, torch_threads: int | None):
    """The model, loaded once per worker process and reused for every shard it runs."""
    key = (card.key, device, str(card.path))
    if key not in _POTENTIALS:
        if torch_threads:
            try:
                import torch

                torch.set_num_threads(torch_threads)  # n workers x threads <= cores: no oversubscription
            except ImportError:
                pass
        from mlip_zoo.zoo.registry import load_potential

        _POTENTIALS[key] = load_potential(card, device=device)
    return _POTENTIALS[key]


_EVALUATORS: dict[str, Evaluator] = {}


def _evaluator(config: TaskConfig) -> Evaluator:
    """The task, built once per worker: finding it among the entry points scans every installed
    distribution (~70 ms), a cost per shard otherwise. Evaluators hold only their config."""
    key = config.model_dump_json()
    if key not in _EVALUATORS:
        _EVALUATORS[key] = evaluator_for(config)
    return _EVALUATORS[key]


def run_shard(card: ModelCard, config: TaskConfig, device: str, records: list[Atoms], path: str,
              torch_threads: int | None = None) -> tuple[int, int]:
    """Run one shard and write it atomically with its checksum; returns (n_ok, n_failed)."""
    evaluator = _evaluator(config)
    # Model packages print banners; in a worker that would land in the user's stdout (and --json).
    with contextlib.redirect_stdout(sys.stderr):
        rows = evaluator.checked_run(_potential(card, device, torch_threads), records)
    table = pa.Table.from_pylist(rows, schema=evaluator.schema)
    target = Path(path)
    with _writing(target):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, target)
        # The checksum is written last: a shard without a matching one is redone, never trusted.
        atomic_write_text(_checksum_path(target), sha256_of(target) + "\n")
    n_failed = sum(r["status"] != "ok" for r in rows)
    return len(rows) - n_failed, n_failed


def _checksum_path(shard: Path) -> Path:
    return shard.with_name(shard.name + ".sha256")


def shard_is_done(shard: Path) -> bool:
    """A finished shard: present, with a checksum that matches. Anything else is redone."""
    check = _checksum_path(shard)
    if not (shard.exists() and check.exists()):
        return False
    if check.read_text().strip() == sha256_of(shard):
        return True
    log.warning("shard %s does not match its checksum (corrupted); recomputing it", shard)
    return False


@contextlib.contextmanager
def _writing(path: Path):
    """Turn a failed write into an error that names the file and the way out."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}. Free disk space or choose a writable "
                          "--out; finished shards are kept and a rerun resumes from them") from exc


# ---------------------------------------------------------------------------------------------
# Driver side.


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
        with _writing(path):
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


def _shards(records: Iterator[Atoms], evaluator: Evaluator, shard_atoms: int, limit: int | None,
            dataset: Dataset) -> Iterator[tuple[int, list[Atoms]]]:
    """Cut the stream into shards of about ``shard_atoms`` atoms, in dataset order (deterministic,
    so a rerun cuts the same shards and can skip the finished ones)."""
    shard, atoms_in_shard, index, seen = [], 0, 0, set()
    for i, atoms in number_records(records):  # ids of id-less records by dataset index, not shard index
        if limit is not None and i >= limit:
            break
        why = evaluator.accepts(atoms)
        if why:
            raise DatasetError(f"{dataset.path}: record {record_id(atoms, i)}: {why}")
        rid = record_id(atoms, i)
        if rid in seen:
            raise DatasetError(f"{dataset.path}: duplicate structure id {rid!r} (record {i}); ids must be unique")
        seen.add(rid)
        shard.append(atoms)
        atoms_in_shard += len(atoms)
        if atoms_in_shard >= shard_atoms:
            yield index, shard
            shard, atoms_in_shard, index = [], 0, index + 1
    if shard:
        yield index, shard


def work_dir(out: Path, card: ModelCard, evaluator: Evaluator, dataset: Dataset, limit: int | None) -> Path:
    """Shards live under a fingerprint of everything the per-structure work depends on."""
    # "ids": 2 -- id-less records are named by their dataset index (shards of 1 used their own)
    key = json.dumps({"card": card_sha256(card) or card.model_dump_json(), "dataset": dataset.sha256,
                      "work": evaluator.work_key(), "limit": limit, "ids": 2,
                      "shard_atoms": evaluator.config.shard_atoms}, sort_keys=True)
    return out / card.key / ".shards" / hashlib.sha256(key.encode()).hexdigest()[:16]


def slurm_cluster(config: Path | None, *, python: str | None = None):
    """An (unscaled) dask-jobqueue SLURMCluster from a YAML of its keyword arguments, plus the
    number of jobs to request (``jobs:``). ``python:`` picks the interpreter jobs run; the
    ``python`` argument overrides it (an isolated model's environment)."""
    import yaml
    from dask_jobqueue import SLURMCluster

    if config is None:
        raise ConfigError("--cluster slurm needs --cluster-config FILE (SLURMCluster keyword arguments "
                          "as YAML: queue, cores, memory, walltime, job_extra_directives, python, jobs)")
    try:
        kwargs = yaml.safe_load(Path(config).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{config}: cannot read the SLURM cluster config: {exc}") from None
    jobs = int(kwargs.pop("jobs", 1))
    if python is not None:
        kwargs["python"] = python
    try:
        return SLURMCluster(**kwargs), jobs
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{config}: not a valid SLURMCluster argument: {str(exc).splitlines()[0]}") from None


def _client(opts: RunOptions):
    from dask.distributed import Client, LocalCluster

    if opts.scheduler:
        return Client(opts.scheduler), None
    if opts.cluster == "slurm":
        cluster, jobs = slurm_cluster(opts.cluster_config)
        keep_jobs(cluster, jobs, opts.cluster_config)  # checked with SLURM first; a cancelled job is replaced
        return Client(cluster), cluster
    if opts.cluster != "local":
        raise ConfigError(f"unknown --cluster {opts.cluster!r}: use local or slurm")
    cluster = LocalCluster(n_workers=opts.workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=50)
    return Client(cluster), cluster


def evaluate(model: str | ModelCard, task: str, opts: RunOptions | None = None) -> dict[str, Any]:
    """Evaluate ``model`` on ``task``; returns the result record (also written to disk)."""
    opts = opts or RunOptions()
    if not isinstance(opts.workers, int) or opts.workers < 0:
        raise ConfigError(f"workers (--workers) must be 0 (run in this process) or a number of Dask worker "
                          f"processes, not {opts.workers!r}")
    started, t0 = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    card = get_card(model) if isinstance(model, str) else model
    evaluator = evaluator_for(evaluator_for(task).for_card(card))  # the protocol for this model (ood-shift: auto)
    config = evaluator.config
    dataset = resolve_dataset(config.dataset, config.dataset_file, opts.dataset)
    device = resolve_device(opts.device)
    from mlip_zoo.zoo.weights import resolve_weights

    weights = {name: f.sha256 for name, f in resolve_weights(card).items()}  # fail fast, before any work
    env = ensure_environment(card)[0] if needs_environment(card, opts.env) else None  # None: this interpreter

    shard_dir = work_dir(opts.out, card, evaluator, dataset, opts.limit)
    with _writing(shard_dir):
        shard_dir.mkdir(parents=True, exist_ok=True)
    with output_lock(opts.out / card.key, config.key):  # one evaluation at a time writes these files
        shards = _shards(iter_records(dataset.path, trust_pickle=opts.trust_pickle), evaluator, config.shard_atoms,
                         opts.limit, dataset)
        paths: list[Path] = []

        def pending() -> Iterator[tuple[list[Atoms], Path]]:
            for index, records in shards:
                path = shard_dir / f"shard-{index:05d}.parquet"
                paths.append(path)
                if shard_is_done(path):  # finished in an earlier run
                    table = pq.read_table(path, columns=["status"])
                    failed = sum(s != "ok" for s in table.column("status").to_pylist())
                    _report(opts, table.num_rows - failed, failed)
                    continue
                yield records, path

        if env is None and opts.workers == 0 and not opts.scheduler and opts.cluster == "local" and opts.client is None:
            for records, path in pending():
                _report(opts, *run_shard(card, config, device, records, str(path)))
        else:
            _run_distributed(card, config, device, pending(), opts, env)

        model_dir = opts.out / card.key
        predictions = model_dir / f"{config.key}.parquet"
        tmp = predictions.with_name(f".{predictions.name}.tmp")
        with _writing(predictions):
            try:
                metrics, intervals, bootstrap, n_structures, failures, references = _summarize(evaluator, paths,
                                                                                               dataset, tmp)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        record = build_result(card=card, task=config, dataset=dataset, metrics=metrics, intervals=intervals,
                              bootstrap=bootstrap, n_structures=n_structures, failures=failures,
                              task_inputs=evaluator.provenance(), predictions=predictions.name,
                              predictions_sha256=sha256_of(tmp), references=references, weights=weights, started=started,
                              wall_time_s=time.perf_counter() - t0, device=device,
                              n_workers=opts.workers, limit=opts.limit)
        if env is not None:  # the model ran with the environment's packages, not the driver's
            seen = env.info()["packages"]
            record["provenance"]["packages"] = {name: seen[name] for name in PACKAGES if name in seen}
            record["provenance"]["environment"] = {"hash": env.hash, "requires": list(card.requires)}
        with _writing(model_dir / f"{config.key}.json"):
            try:
                commit_result(model_dir / f"{config.key}.json", record, tmp)
            finally:
                tmp.unlink(missing_ok=True)
        return record


def _summarize(evaluator: Evaluator, paths: list[Path], dataset: Dataset, joined: Path
               ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], int, list[dict[str, Any]], dict[str, Any]]:
    """Metrics, their intervals and the bootstrap record, the number of structures, the id and
    reason of each failed one, and the digest of the reference columns; the shards are copied
    into one predictions file, ``joined``, on the way. A task with ``complete_terms`` keeps only per-row terms of each shard, so memory does
    not grow with the predictions; any other gets its whole predictions table."""
    parts, strata, tables, failures, n_structures = [], [], [], [], 0
    references = ReferenceDigest(reference_columns(evaluator))
    with contextlib.ExitStack() as stack:
        writer = None
        for path in paths:
            shard = pq.read_table(path)
            writer = writer or stack.enter_context(pq.ParquetWriter(joined, shard.schema))
            writer.write_table(shard)
            references.update(shard)
            n_structures += shard.num_rows
            failures += shard.filter(pc.not_equal(shard.column("status"), "ok")).select(["id", "reason"]).to_pylist()
            if evaluator.complete_terms:
                parts.append((evaluator.metric_terms(shard), shard.num_rows))
                strata.append(strata_labels(shard, evaluator.config.bootstrap))
            else:
                tables.append(shard)
    if not n_structures:
        raise DatasetError(f"{dataset.path}: no structures to evaluate (empty dataset or --limit 0)")
    if evaluator.complete_terms:
        table, terms = None, concat_terms(parts)
        metrics = evaluator.metrics_from_terms(terms)
        strata = None if strata[0] is None else np.concatenate(strata)
    else:
        table, terms, strata = pa.concat_tables(tables), None, None
        metrics = evaluator.metrics(table)
    intervals, bootstrap = metric_intervals(evaluator, table, metrics, terms=terms, strata=strata)
    return metrics, intervals, bootstrap, n_structures, failures, references.record()


def _report(opts: RunOptions, ok: int, failed: int) -> None:
    if opts.progress is not None:
        opts.progress(ok, failed)


def _run_distributed(card, config, device, pending, opts: RunOptions, env: Environment | None = None) -> None:
    from dask.distributed import as_completed

    if env is not None:  # the environment's own cluster: the run's, or one just for this evaluation
        own = EnvClusters(opts) if opts.env_clusters is None else None
        client, cluster = (opts.env_clusters or own).client(env), own
    else:
        client, cluster = (opts.client, None) if opts.client is not None else _client(opts)
    shard_dir = None
    try:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})) or opts.workers)
        threads = (opts.torch_threads or max(1, (os.cpu_count() or 1) // n_workers)
                   if opts.cluster == "local" and not opts.scheduler else None)
        # The card goes with each shard (~2 kB, as the task config does): scattering it first would
        # need a connected worker, and SLURM jobs may still be waiting in the queue.
        in_flight = as_completed()
        for records, path in pending:
            shard_dir = path.parent
            in_flight.add(client.submit(run_shard, card, config, device, records, str(path), threads,
                                        key=f"run_shard-{path.name}-{uuid.uuid4().hex[:8]}"))  # names the shard
            # Bounded: never the whole dataset in memory or in flight. Recounted as SLURM jobs connect.
            while in_flight.count() >= 2 * capacity(client):
                _report(opts, *next(in_flight).result())
        for future in in_flight:
            _report(opts, *future.result())
    except Exception as exc:  # a lost scheduler or a worker-killing shard: say so, not a traceback
        failure = cluster_failure(exc, client, shard_dir, opts.scheduler)
        if failure is None:
            raise
        raise failure from None
    finally:
        if env is not None:
            if cluster is not None:
                cluster.close()
        elif opts.client is None:
            client.close()
            if cluster is not None:
                cluster.close()


@contextlib.contextmanager
def cluster_client(opts: RunOptions):
    """One cluster for many evaluations (``mlipzoo run``): workers keep their loaded models
    between tasks instead of loading them again for each. Yields None for in-process runs."""
    if opts.workers == 0 and not opts.scheduler and opts.cluster == "local":
        yield None
        return
    client, cluster = _client(opts)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


class EnvClusters:
    """The Dask clusters of isolated model environments (zoo/envs.py) for one run: one per
    environment, started when a model first needs it and kept until the run ends, so its workers
    keep the model loaded between tasks, as the shared cluster's do.

    Why a cluster per environment rather than extra workers on the shared one: every worker of a
    cluster runs the same interpreter, so no resource tags or worker restrictions are needed to
    keep a model's shards off workers that cannot import it, and submission, progress, failures
    and worker loss go through exactly the code path of the shared environment. Why workers and
    not a subprocess running ``mlipzoo eval``: the shards, their checksums and the result record
    stay the driver's, and on SLURM it is simply dask-jobqueue's ``python=`` (the environment, and
    the one mlip-zoo runs from, which it is layered on, must then sit on a filesystem the nodes
    share: set ``MLIPZOO_ENVS``). Locally the workers are
    ``python -m distributed.cli.dask_worker`` processes (with nannies, which restart a lost one)
    started from the environment's interpreter; they exit if the scheduler goes away.
    """

    def __init__(self, opts: RunOptions):
        self.opts = opts
        self._clusters: dict[str, tuple[Any, Any]] = {}

    def client(self, env: Environment):
        if env.hash not in self._clusters:
            self._clusters[env.hash] = self._start(env)
        return self._clusters[env.hash][0]

    def _start(self, env: Environment):
        from dask.distributed import Client

        opts = self.opts
        if opts.scheduler:
            raise ConfigError(
                f"{env.key} runs in its own environment ({env.path}), and the workers of the scheduler at "
                f"{opts.scheduler} run another interpreter. Use the local cluster or --cluster slurm (both start "
                f"workers from {env.python}), or --env shared if that interpreter has the model's packages")
        if opts.cluster == "slurm":
            cluster, jobs = slurm_cluster(opts.cluster_config, python=str(env.python))
            keep_jobs(cluster, jobs, opts.cluster_config)
            return Client(cluster), cluster
        if opts.cluster != "local":
            raise ConfigError(f"unknown --cluster {opts.cluster!r}: use local or slurm")
        n = max(1, opts.workers)
        cluster = _env_local_cluster(env, n)
        client = Client(cluster)
        deadline = time.monotonic() + 180
        while True:  # until they connect, one of them exits (a broken environment), or time runs out
            try:
                client.wait_for_workers(n, timeout=2)
                return client, cluster
            except TimeoutError:
                exited = [w.process.returncode for w in cluster.workers.values()
                          if w.process is not None and w.process.returncode is not None]
                if exited or time.monotonic() > deadline:
                    client.close()
                    cluster.close()
                    why = f"a worker exited with code {exited[0]}" if exited else "they did not connect in 180 s"
                    raise EnvError(f"{env.key}: the Dask workers started from {env.python} did not start: {why}. "
                                   f"Their output is in {_worker_log(env)}; `mlipzoo env remove {env.key}` and a "
                                   "rerun rebuild the environment") from None

    def close(self) -> None:
        for client, cluster in self._clusters.values():
            client.close()
            if cluster is not None:
                cluster.close()
        self._clusters.clear()

    def __enter__(self) -> EnvClusters:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _worker_log(env: Environment) -> Path:
    return env.path / "workers.log"


def _env_local_cluster(env: Environment, n_workers: int):
    """A scheduler in this process and ``n_workers`` worker processes from ``env``'s interpreter."""
    import asyncio
    import subprocess

    from distributed import Scheduler
    from distributed.deploy.spec import ProcessInterface, SpecCluster

    class EnvWorker(ProcessInterface):
        def __init__(self, scheduler: str, name: str):
            super().__init__(scheduler, name)
            self.scheduler, self.name, self.process, self.log = scheduler, name, None, None

        async def start(self) -> None:
            self.log = open(_worker_log(env), "ab")  # noqa: SIM115 (closed in close())
            self.process = await asyncio.create_subprocess_exec(
                str(env.python), "-m", "distributed.cli.dask_worker", self.scheduler, "--name", str(self.name),
                "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard", "--death-timeout", "60",
                stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
            await super().start()

        async def close(self) -> None:
            if self.process is not None and self.process.returncode is None:
                self.process.terminate()
                try:
                    await asyncio.wait_for(self.process.wait(), 20)
                except asyncio.TimeoutError:
                    self.process.kill()
                    await self.process.wait()
            if self.log is not None:
                self.log.close()
            await super().close()

    return SpecCluster(
        scheduler={"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False, "dashboard_address": ":0"}},
        workers={f"{env.key}-{i}": {"cls": EnvWorker} for i in range(n_workers)},
        silence_logs=50, name=f"mlipzoo-env-{env.key}")
