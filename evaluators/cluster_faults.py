"""What a distributed evaluation does when its cluster loses part of itself.

- A lost **worker** (SIGKILL, OOM, a node gone) costs nothing: Dask reruns its shard elsewhere, and
  a shard is written only whole (see shards.write), so the metrics are those of an undisturbed run.
- A lost **SLURM job** (``scancel``, walltime, preemption) is submitted again: without that, a run
  whose jobs have all gone would wait for workers forever.
- A lost **scheduler**, or a shard that killed every worker it ran on, ends the run with a
  ``ClusterError`` that names it and says that finished shards are kept and a rerun resumes.
"""

from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

from mlip_zoo.errors import ClusterError

KEEP_JOBS_EVERY_MS = 5_000


class _LostSchedulerLogs(logging.Filter):
    """Drop what Dask's client logs while it fails to reconnect to a lost scheduler (a traceback
    or a "Failed to reconnect" line): the run reports the loss itself, as a ClusterError that
    says what was kept and what to do."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, (OSError, CancelledError, asyncio.CancelledError)) or "reconnect" in str(record.msg))


logging.getLogger("distributed.client").addFilter(_LostSchedulerLogs())


def keep_jobs(cluster: Any, jobs: int, config: Path | None = None) -> None:
    """Scale a dask-jobqueue cluster to ``jobs`` now and again every few seconds, so a job that
    ended early is replaced. (Dask forgets a lost worker's job after
    ``distributed.deploy.lost-worker-timeout``, 15 s by default; rescaling then submits a new one.
    ``adapt`` would not: its target equals its plan, so it sees nothing to do.) First, SLURM is
    asked whether it would run the job at all, so a bad partition or memory request is an error
    now rather than a log line per resubmission and a run that waits for workers forever."""
    from tornado.ioloop import PeriodicCallback

    if jobs > 0:
        try:
            _check_submission(cluster, config)
        except BaseException:
            cluster.close()
            raise
    cluster.scale(jobs=jobs)
    rescale = PeriodicCallback(lambda: cluster.scale(jobs=jobs), KEEP_JOBS_EVERY_MS)
    cluster.periodic_callbacks["mlipzoo-keep-jobs"] = rescale  # stopped when the cluster closes
    cluster.loop.add_callback(rescale.start)


def _check_submission(cluster: Any, config: Path | None) -> None:
    """``sbatch --test-only`` on the worker job script: SLURM validates it without queueing it."""
    import os
    import shlex
    import subprocess
    import tempfile

    from mlip_zoo.errors import ConfigError

    where = f"{config}: " if config else ""
    submit = shlex.split(cluster.job_cls.submit_command)
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
        f.write(cluster.job_script())
    try:
        proc = subprocess.run([*submit, "--test-only", f.name], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise ConfigError(f"{where}{submit[0]} not found: run --cluster slurm on a machine that submits SLURM jobs "
                          "(a login node), with SLURM's commands on PATH") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{where}`{submit[0]} --test-only` did not answer in 60 s: is slurmctld reachable "
                          "(`sinfo`)?") from None
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        said = " ".join((proc.stderr or proc.stdout).split())
        raise ConfigError(f"{where}SLURM would not run the Dask worker job: `{submit[0]} --test-only` says: {said}. "
                          "Fix the queue (partition), account, cores, memory or walltime in the cluster config, "
                          "and check that `sinfo` works here")


def capacity(client: Any) -> int:
    """Workers to keep busy: those connected, or those a cluster has asked for and that have not
    connected yet (SLURM jobs still in the queue), whichever is more."""
    connected = len(client.scheduler_info().get("workers", {}))
    planned = len(getattr(client.cluster, "plan", None) or ())
    return max(1, connected, planned)


def scheduler_address(client: Any, fallback: str | None = None) -> str:
    cluster = getattr(client, "cluster", None)
    for address in (fallback, getattr(cluster, "scheduler_address", None),
                    getattr(getattr(client, "scheduler", None), "address", None)):
        if address:
            return str(address)
    return "the Dask scheduler"


def cluster_failure(exc: BaseException, client: Any, shard_dir: Path | None,
                    address: str | None = None) -> ClusterError | None:
    """The ClusterError ``exc`` means, or None if it is not the cluster's doing."""
    from distributed.scheduler import KilledWorker

    kept = _kept(shard_dir)
    if isinstance(exc, KilledWorker):
        task = str(exc.args[0]) if exc.args else ""
        named = re.match(r"run_shard-(shard-\d+\.parquet)-", task)  # the runner's task keys name the shard file
        what = (f"shard {shard_dir / named[1] if shard_dir else named[1]}" if named
                else f"shard task {task or '(unnamed)'}")
        return ClusterError(
            f"{what} killed every Dask worker that ran it (Dask gives up after "
            f"distributed.scheduler.allowed-failures). A worker usually dies like this when a shard needs more "
            f"memory than it has: lower the task's shard_atoms, or give workers more memory. {kept}")
    from distributed.comm.core import CommClosedError

    # Cancelled by the client when it lost the scheduler, or a request cut off as it went away.
    lost = (isinstance(exc, CancelledError) and "scheduler-connection-lost" in str(getattr(exc, "reason", exc))
            or isinstance(exc, CommClosedError))
    if lost or getattr(client, "status", "running") not in ("running", "connecting", "newly-created"):
        return ClusterError(
            f"lost the connection to the Dask scheduler at {scheduler_address(client, address)}. {kept} "
            f"Start the scheduler and its workers again (or point --scheduler at a new one) and rerun the same "
            f"command: it resumes from the finished shards")
    return None


def _kept(shard_dir: Path | None) -> str:
    if shard_dir is None:
        return "Finished shards are kept."
    from mlip_zoo.evaluators.shards import is_done

    done = sum(is_done(p) for p in sorted(shard_dir.glob("shard-*.parquet")))
    return f"{done} finished shard(s) are kept in {shard_dir}."
