"""Where shards run: Dask clusters, created here and nowhere else.

``Clusters`` holds the clients of one run (``mlipzoo run`` keeps it for every evaluation, so
workers keep their loaded models between tasks; ``mlipzoo eval`` makes one for its single
evaluation): the shared cluster (an embedded LocalCluster, a running scheduler, or SLURM through
dask-jobqueue) and, per isolated model environment, a cluster whose workers run that
environment's interpreter. ``run_shards`` submits a plan's pending shards to the right one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ase import Atoms

from mlip_zoo.errors import ConfigError, EnvError
from mlip_zoo.evaluators.cluster_faults import capacity, cluster_failure, keep_jobs
from mlip_zoo.evaluators.plan import Plan, RunOptions
from mlip_zoo.evaluators.worker import run_shard
from mlip_zoo.zoo.envs import Environment

Report = Callable[[int, int], None]  # (ok, failed) structures just finished


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


class Clusters:
    """The Dask clusters of one run, each started when first needed and closed with the run.

    Why a cluster per isolated environment rather than extra workers on the shared one: every
    worker of a cluster runs the same interpreter, so no resource tags or worker restrictions are
    needed to keep a model's shards off workers that cannot import it, and submission, progress,
    failures and worker loss go through exactly the code path of the shared environment. Why
    workers and not a subprocess running ``mlipzoo eval``: the shards, their checksums and the
    result record stay the driver's, and on SLURM it is simply dask-jobqueue's ``python=`` (the
    environment, and the one mlip-zoo runs from, which it is layered on, must then sit on a
    filesystem the nodes share: set ``MLIPZOO_ENVS``). Locally the workers are
    ``python -m distributed.cli.dask_worker`` processes (with nannies, which restart a lost one)
    started from the environment's interpreter; they exit if the scheduler goes away.
    """

    def __init__(self, opts: RunOptions):
        self.opts = opts
        self._clients: dict[str | None, tuple[Any, Any]] = {}  # environment hash (None: shared) -> (client, cluster)

    def client(self, env: Environment | None = None):
        key = None if env is None else env.hash
        if key not in self._clients:
            self._clients[key] = self._shared() if env is None else self._for_environment(env)
        return self._clients[key][0]

    def _shared(self):
        from dask.distributed import Client, LocalCluster

        opts = self.opts
        if opts.scheduler:
            # Dask's client logs at INFO, with a traceback, the lost connection this run reports in one
            # line of its own (cluster_faults); its warnings and errors still show.
            logging.getLogger("distributed").setLevel(logging.WARNING)
            return Client(opts.scheduler), None
        if opts.cluster == "slurm":
            cluster, jobs = slurm_cluster(opts.cluster_config)
            keep_jobs(cluster, jobs, opts.cluster_config)  # checked with SLURM first; a cancelled job is replaced
            return Client(cluster), cluster
        cluster = LocalCluster(n_workers=max(1, opts.workers), threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=50)
        return Client(cluster), cluster

    def _for_environment(self, env: Environment):
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
        for client, cluster in self._clients.values():
            client.close()
            if cluster is not None:
                cluster.close()
        self._clients.clear()

    def __enter__(self) -> Clusters:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def clusters_for(plan: Plan, opts: RunOptions, shared: Clusters | None = None) -> Iterator[Clusters | None]:
    """Where ``plan``'s shards run, decided here only: in this process (None) for ``--workers 0``
    and a model of this interpreter; else the run's ``shared`` clusters, or clusters of its own."""
    if opts.in_process and plan.environment is None:
        yield None
    elif shared is not None:
        yield shared
    else:
        with Clusters(opts) as own:
            yield own


def run_shards(plan: Plan, pending: Iterable[tuple[list[Atoms], Path]], clusters: Clusters, report: Report) -> None:
    """Run ``pending`` shards on the plan's cluster, at most two per worker in flight (never the
    whole dataset in memory or in flight), reporting each as it finishes."""
    from dask.distributed import as_completed

    opts = clusters.opts
    client = clusters.client(plan.environment)
    shard_dir = None
    try:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})) or opts.workers)
        local = opts.cluster == "local" and not opts.scheduler
        threads = (opts.torch_threads or max(1, (os.cpu_count() or 1) // n_workers)) if local else None
        # The plan goes with each shard (~5 kB): scattering it first would need a connected
        # worker, and SLURM jobs may still be waiting in the queue.
        in_flight = as_completed()
        for records, path in pending:
            shard_dir = path.parent
            in_flight.add(client.submit(run_shard, plan, records, str(path), threads,
                                        key=f"run_shard-{path.name}-{uuid.uuid4().hex[:8]}"))  # names the shard
            # Bounded: never the whole dataset in memory or in flight. Recounted as SLURM jobs connect.
            while in_flight.count() >= 2 * capacity(client):
                report(*next(in_flight).result())
        for future in in_flight:
            report(*future.result())
    except Exception as exc:  # a lost scheduler or a worker-killing shard: say so, not a traceback
        failure = cluster_failure(exc, client, shard_dir, opts.scheduler)
        if failure is None:
            raise
        raise failure from None


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
