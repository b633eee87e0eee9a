"""Distributed engines for real, driven through the command line as a user drives them:

- a standalone Dask cluster (``dask scheduler`` + two ``dask worker`` processes): a worker killed
  with SIGKILL mid-run costs nothing (metrics identical to an undisturbed run); a scheduler lost
  mid-run ends the command with a clear error, and the rerun on a new scheduler resumes;
- a private single-node SLURM (tests/slurm_local.py: munged, slurmctld, slurmd): ``mlipzoo eval``
  and ``mlipzoo run --cluster slurm`` run real jobs with the numbers of a local run; a job
  cancelled mid-run (``scancel``) is replaced and costs nothing; an isolated model environment
  runs on SLURM workers from its own Python.

The "slow" model is EMT with a sleep per call (tests/fake_calcs.py), so runs last long enough to be
disturbed; every comparison is exact, because the same structure gives the same EMT numbers in any
process, shard order or worker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from slurm_local import LocalSlurm, missing_reason

TESTS = Path(__file__).parent
BIN = Path(sys.executable).parent
LIMIT = 200  # oc20-mini: ~15 atoms a structure, shard_atoms 500 -> 7 shards
SLOW_CARD = """\
    key: slow-emt
    name: EMT, slowly
    version: "1"
    family: ase
    calculator: "fake_calcs:SlowEMT"
    calculator_kwargs: {delay: 0.05}
    license: MIT
    targets: EFS
    """


def _command(script: str, module: str) -> list[str]:
    """The console script installed beside this Python (as users run it), else its module."""
    exe = BIN / script
    return [str(exe)] if exe.exists() else [sys.executable, "-m", module]


MLIPZOO = _command("mlipzoo", "mlip_zoo.cli")
DASK = _command("dask", "dask")


@pytest.fixture(scope="module")
def base_env(tmp_path_factory):
    """What every command here runs with: the test cards, tests/ importable by workers (for
    fake_calcs), private caches, offline."""
    root = tmp_path_factory.mktemp("dist")
    cards = root / "cards"
    cards.mkdir()
    (cards / "slow-emt.yaml").write_text(textwrap.dedent(SLOW_CARD))
    return {**os.environ, "MLIPZOO_CARDS": str(cards), "MLIPZOO_CALCULATOR_MODULES": "fake_calcs",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
            "MLIPZOO_CACHE": str(root / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def mlipzoo(*args, env, timeout=300, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*MLIPZOO, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"mlipzoo {' '.join(map(str, args))} failed:\n{proc.stderr[-4000:]}"
    return proc


def start_mlipzoo(*args, env) -> subprocess.Popen:
    return subprocess.Popen([*MLIPZOO, *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen, timeout=300) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the command hung (killed after {timeout} s); stderr:\n{err[-4000:]}")
    return proc.returncode, out, err


def finished_shards(out: Path) -> list[Path]:
    """Shards written whole: the checksum file comes last (evaluators/shards.py: write)."""
    return sorted(p.with_name(p.name[:-len(".sha256")]) for p in out.rglob("shard-*.parquet.sha256"))


def wait_for_shards(out: Path, n: int, proc: subprocess.Popen, timeout=120) -> None:
    deadline = time.monotonic() + timeout
    while len(finished_shards(out)) < n:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (code {proc.returncode}) before {n} shards were written:\n"
                        f"{proc.stderr.read()[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"fewer than {n} shards written in {timeout} s")
        time.sleep(0.1)


def same_numbers(a: dict, b: dict) -> None:
    """Exactly the same result: metrics, their intervals, structures and failures."""
    for key in ("metrics", "intervals", "failures", "n_structures", "n_failed"):
        assert json.dumps(a[key], sort_keys=True) == json.dumps(b[key], sort_keys=True), key


def result(out: Path, model: str, task: str) -> dict:
    return json.loads((out / model / f"{task}.json").read_text())


@pytest.fixture(scope="module")
def slow_reference(base_env, tmp_path_factory):
    """The undisturbed run, in-process."""
    out = tmp_path_factory.mktemp("reference")
    mlipzoo("eval", "slow-emt", "oc20-s2ef", "--limit", LIMIT, "--workers", 0, "--out", out, "--wandb", "disabled",
            env=base_env)
    record = result(out, "slow-emt", "oc20-s2ef")
    assert record["n_structures"] == LIMIT and len(finished_shards(out)) >= 6  # enough shards to disturb a run
    record["_shards"] = len(finished_shards(out))  # not part of the comparison (same_numbers)
    return record


# ---------------------------------------------------------------------------------------------
# A standalone Dask cluster, from the command line.


class StandaloneDask:
    """``dask scheduler`` and ``dask worker`` processes, as a user starts them by hand. The
    scheduler takes a free port (--port 0) and writes its address to a scheduler file."""

    def __init__(self, root: Path, env: dict):
        self.root, self.env = root, env
        self.root.mkdir(parents=True, exist_ok=True)
        self.scheduler: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}
        self.file = root / "scheduler.json"

    def start(self, n_workers: int = 2) -> StandaloneDask:
        self.file.unlink(missing_ok=True)
        self.scheduler = self._spawn("scheduler", [*DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                                                   "--dashboard-address", ":0", "--scheduler-file", str(self.file)])
        deadline = time.monotonic() + 60
        while not self.file.exists() or not self.file.read_text().strip().endswith("}"):
            assert self.scheduler.poll() is None and time.monotonic() < deadline, self._log("scheduler")
            time.sleep(0.1)
        self.address = json.loads(self.file.read_text())["address"]
        for i in range(n_workers):
            name = f"w{i}"
            # No nanny: the process we kill is the worker itself, and nobody restarts it.
            self.workers[name] = self._spawn(name, [*DASK, "worker", "--scheduler-file", str(self.file),
                                                    "--nthreads", "1", "--no-nanny", "--no-dashboard",
                                                    "--name", name, "--death-timeout", "30"])
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(n_workers, timeout=120)
        return self

    def stop(self) -> None:
        for proc in [*self.workers.values(), self.scheduler]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 (inherited by the child)
        return subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def _log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-3000:]


@pytest.fixture
def dask_cluster(tmp_path, base_env):
    clusters = []

    def start(name="cluster"):
        clusters.append(cluster := StandaloneDask(tmp_path / name, base_env).start())
        return cluster

    yield start
    for cluster in clusters:
        cluster.stop()


def test_sigkilled_worker_costs_no_result(dask_cluster, slow_reference, base_env, tmp_path):
    cluster = dask_cluster()
    out = tmp_path / "out"
    proc = start_mlipzoo("eval", "slow-emt", "oc20-s2ef", "--limit", LIMIT, "--scheduler", cluster.address,
                         "--out", out, "--wandb", "disabled", "--json", env=base_env)
    wait_for_shards(out, 2, proc)
    victim = cluster.workers["w0"]
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(30) == -signal.SIGKILL
    assert proc.poll() is None, "the run finished before a worker could be killed mid-way"
    code, stdout, stderr = finish(proc)
    assert code == 0, stderr[-4000:]
    record = json.loads(stdout)
    same_numbers(record, slow_reference)
    assert cluster.workers["w1"].poll() is None  # the survivor did the rest


def test_lost_scheduler_is_a_clear_error_and_the_rerun_resumes(dask_cluster, slow_reference, base_env, tmp_path):
    first = dask_cluster("first")
    out = tmp_path / "out"
    args = ("eval", "slow-emt", "oc20-s2ef", "--limit", LIMIT, "--out", out, "--wandb", "disabled", "--json")
    proc = start_mlipzoo(*args, "--scheduler", first.address, env=base_env)
    wait_for_shards(out, 2, proc)
    first.scheduler.send_signal(signal.SIGKILL)
    code, stdout, stderr = finish(proc, timeout=180)
    assert code == 1 and not stdout
    assert "Traceback" not in stderr, stderr[-4000:]
    message = " ".join(stderr.split())  # rich wraps long lines
    assert f"lost the connection to the Dask scheduler at {first.address}" in message
    counted = re.search(r"(\d+) finished shard\(s\) are kept in (\S+)\.", message)
    assert counted and int(counted[1]) >= 2, message
    assert "rerun the same command: it resumes from the finished shards" in message
    assert not (out / "slow-emt" / "oc20-s2ef.json").exists()
    first.stop()  # its workers may finish the shard they hold first: that one is kept too
    kept = finished_shards(out)
    assert counted[2] == str(kept[0].parent) and int(counted[1]) <= len(kept) < slow_reference["_shards"]

    stamps = {p: p.stat().st_mtime_ns for p in kept}
    second = dask_cluster("second")
    code, stdout, stderr = finish(start_mlipzoo(*args, "--scheduler", second.address, env=base_env))
    assert code == 0, stderr[-4000:]
    same_numbers(json.loads(stdout), slow_reference)
    assert {p: p.stat().st_mtime_ns for p in kept} == stamps  # resumed: finished shards were not redone


def test_a_shard_that_kills_its_workers_is_a_clear_error(base_env, tmp_path):
    """A structure that takes its worker process down (an OOM kill, a segfault) every time: Dask
    retries the shard on fresh workers, then gives up; the command says which shard and what to do."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames = []
    for i in range(4):
        atoms = bulk("Cu", "fcc", a=3.6 + 0.01 * i) * 2
        atoms.info.update({"sid": f"cu{i}", "fid": 0, "split": "id", "explode": i == 2})
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        frames.append(atoms)
    write(tmp_path / "set.extxyz", frames, format="extxyz")
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "lethal-emt.yaml").write_text(textwrap.dedent("""\
        key: lethal-emt
        name: EMT that takes its process down on marked structures
        version: "1"
        family: ase
        calculator: "fake_calcs:LethalEMT"
        license: MIT
        targets: EFS
        """))
    env = {**base_env, "MLIPZOO_CARDS": str(tmp_path / "cards"),
           "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"}  # give up after two deaths, not four
    proc = mlipzoo("eval", "lethal-emt", "oc20-s2ef", "--dataset", tmp_path / "set.extxyz", "--workers", 1,
                   "--out", tmp_path / "out", "--wandb", "disabled", env=env, check=False, timeout=240)
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    (shard,) = (tmp_path / "out" / "lethal-emt" / ".shards").glob("*/")
    assert f"error: shard {shard / 'shard-00000.parquet'} killed every Dask worker that ran it" in message, message
    assert "lower the task's shard_atoms, or give workers more memory" in message


# ---------------------------------------------------------------------------------------------
# A real single-node SLURM.


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    why = missing_reason()
    if why:
        pytest.skip(f"no SLURM here: {why}")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()  # fails, with the daemons' logs, if it cannot
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(cluster.conf))
        mp.setenv("PATH", cluster.env["PATH"])
        try:
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture
def slurm_env(slurm, base_env):
    return {**base_env, "SLURM_CONF": str(slurm.conf), "PATH": slurm.env["PATH"]}


def slurm_config(path: Path, jobs: int, **extra) -> Path:
    """dask-jobqueue SLURMCluster arguments, as a user writes them (README: --cluster-config)."""
    config = {"queue": "debug", "cores": 1, "processes": 1, "memory": "1GB", "walltime": "00:10:00",
              "log_directory": str(path.parent / "job-logs"), "scheduler_options": {"dashboard_address": ":0"},
              "jobs": jobs, **extra}
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


class QueueWatch:
    """Polls ``squeue`` while a command runs: every job it saw, with the states it saw it in."""

    def __init__(self, slurm: LocalSlurm):
        self.slurm, self.seen, self._stop = slurm, {}, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            for job in self.slurm.queue():
                self.seen.setdefault(job["id"], set()).add((job["name"], job["state"]))
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def new_jobs(slurm: LocalSlurm, before: set[str], at_least: int) -> list[dict[str, str]]:
    """Jobs that ended since ``before``, once ``at_least`` of them have: slurmctld logs a job when
    its processes are gone, a moment after the run cancelled it."""
    deadline = time.monotonic() + 60
    while len(jobs := [j for j in slurm.finished() if j["id"] not in before]) < at_least:
        assert time.monotonic() < deadline, f"only {len(jobs)} of {at_least} jobs ended: {jobs}\n{slurm.logs()}"
        time.sleep(0.2)
    return jobs


def test_eval_on_slurm_runs_jobs_with_the_numbers_of_a_local_run(slurm, slurm_env, tmp_path):
    config = slurm_config(tmp_path / "slurm.yaml", jobs=2)
    args = ("eval", "emt", "oc20-s2ef", "--limit", 120, "--wandb", "disabled", "--json")
    local = json.loads(mlipzoo(*args, "--workers", 0, "--out", tmp_path / "local", env=slurm_env).stdout)
    before = {j["id"] for j in slurm.finished()}
    with QueueWatch(slurm) as watch:
        on_slurm = json.loads(mlipzoo(*args, "--cluster", "slurm", "--cluster-config", config,
                                      "--out", tmp_path / "slurm", env=slurm_env).stdout)
    same_numbers(on_slurm, local)
    jobs = new_jobs(slurm, before, 2)
    # Two worker jobs ran on this node and were cancelled when the run closed its cluster.
    assert len(jobs) == 2 and all(j["name"] == "dask-worker" and j["nodes"] == slurm.host for j in jobs), jobs
    assert {j["id"] for j in jobs} <= set(watch.seen)
    assert any(("dask-worker", "RUNNING") in states for states in watch.seen.values()), watch.seen


def test_run_plan_on_slurm_gives_the_numbers_of_a_local_run(slurm, slurm_env, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("runs:\n  - models: [emt]\n    tasks: [oc20-s2ef, eos]\n    limit: 40\n")
    config = slurm_config(tmp_path / "slurm.yaml", jobs=2)
    args = ("run", plan, "--wandb", "disabled", "--json")
    local = json.loads(mlipzoo(*args, "--workers", 0, "--out", tmp_path / "local", "--site", tmp_path / "site-l",
                               env=slurm_env).stdout)
    before = {j["id"] for j in slurm.finished()}
    on_slurm = json.loads(mlipzoo(*args, "--cluster", "slurm", "--cluster-config", config, "--out",
                                  tmp_path / "slurm", "--site", tmp_path / "site-s", env=slurm_env).stdout)
    assert not on_slurm["errors"] and len(on_slurm["results"]) == len(local["results"]) == 2
    for a, b in zip(on_slurm["results"], local["results"]):
        assert (a["model"], a["task"]) == (b["model"], b["task"])
        same_numbers(a, b)
    # One cluster for the whole plan: its two jobs served both tasks.
    jobs = new_jobs(slurm, before, 2)
    assert len(jobs) == 2 and all(j["name"] == "dask-worker" for j in jobs), jobs


def test_scancelled_job_is_replaced_and_costs_no_result(slurm, slurm_env, slow_reference, tmp_path):
    config = slurm_config(tmp_path / "slurm.yaml", jobs=1)
    out = tmp_path / "out"
    # Dask forgets a lost worker after this long; then the runner submits a job in its place.
    env = {**slurm_env, "DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT": "1s"}
    before = {j["id"] for j in slurm.finished()} | {j["id"] for j in slurm.queue()}
    proc = start_mlipzoo("eval", "slow-emt", "oc20-s2ef", "--limit", LIMIT, "--cluster", "slurm",
                         "--cluster-config", config, "--out", out, "--wandb", "disabled", "--json", env=env)
    wait_for_shards(out, 2, proc)
    running = [j for j in slurm.queue() if j["state"] == "RUNNING" and j["id"] not in before]
    assert len(running) == 1, running  # the run's only job: without a replacement it could never finish
    slurm.run("scancel", running[0]["id"])
    assert proc.poll() is None, "the run finished before its job could be cancelled"
    code, stdout, stderr = finish(proc)
    assert code == 0, stderr[-4000:]
    same_numbers(json.loads(stdout), slow_reference)
    jobs = {j["id"]: j for j in new_jobs(slurm, before, 2)}  # the cancelled one and its replacement
    assert jobs[running[0]["id"]]["state"] == "CANCELLED"
    assert any(int(i) > int(running[0]["id"]) for i in jobs), jobs  # a job submitted after the cancellation


@pytest.mark.slow
def test_workers_retiring_before_their_walltime_are_replaced(slurm, slurm_env, slow_reference, tmp_path):
    """docs/scale-out.md's walltime recipe: each worker retires after --lifetime (as it would
    before its job's walltime), its job ends, and a new one takes over; the numbers do not move."""
    config = slurm_config(tmp_path / "slurm.yaml", jobs=1, worker_extra_args=["--lifetime", "10s"])
    env = {**slurm_env, "DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT": "1s"}
    before = {j["id"] for j in slurm.finished()} | {j["id"] for j in slurm.queue()}
    # One worker needs ~10 s for these 200 slow structures, so the first one retires mid-run.
    proc = mlipzoo("eval", "slow-emt", "oc20-s2ef", "--limit", LIMIT, "--cluster", "slurm", "--cluster-config", config,
                   "--out", tmp_path / "out", "--wandb", "disabled", "--json", env=env)
    same_numbers(json.loads(proc.stdout), slow_reference)
    assert len(new_jobs(slurm, before, 2)) >= 2  # the first job and at least one that replaced it


def test_jobs_waiting_in_the_queue_are_waited_for(slurm, slurm_env, tmp_path):
    """Jobs held in the queue longer than Dask's connect timeout: the run waits for its workers
    (as on a busy cluster) instead of failing, and gives the numbers of a local run."""
    config = slurm_config(tmp_path / "slurm.yaml", jobs=1, job_extra_directives=["--hold"])
    env = {**slurm_env, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    args = ("eval", "emt", "oc20-s2ef", "--limit", 40, "--wandb", "disabled", "--json")
    proc = start_mlipzoo(*args, "--cluster", "slurm", "--cluster-config", config, "--out", tmp_path / "slurm", env=env)
    deadline = time.monotonic() + 60
    while not (held := [j for j in slurm.queue() if j["name"] == "dask-worker" and j["state"] == "PENDING"]):
        assert proc.poll() is None and time.monotonic() < deadline, finish(proc)[2][-4000:]
        time.sleep(0.2)
    time.sleep(5)  # longer than the connect timeout above: the driver must still be waiting
    assert proc.poll() is None, finish(proc)[2][-4000:]
    slurm.run("scontrol", "release", held[0]["id"])
    code, stdout, stderr = finish(proc)
    assert code == 0, stderr[-4000:]
    local = json.loads(mlipzoo(*args, "--workers", 0, "--out", tmp_path / "local", env=env).stdout)
    same_numbers(json.loads(stdout), local)


def test_a_job_slurm_would_refuse_is_a_clear_error(slurm, slurm_env, tmp_path):
    config = slurm_config(tmp_path / "slurm.yaml", jobs=1, queue="no-such-partition")
    proc = mlipzoo("eval", "emt", "oc20-s2ef", "--limit", 4, "--cluster", "slurm", "--cluster-config", config,
                   "--out", tmp_path / "out", "--wandb", "disabled", env=slurm_env, check=False)
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert f"{config}: SLURM would not run the Dask worker job: `sbatch --test-only` says:" in message
    assert "invalid partition" in message.lower() and "Fix the queue (partition)" in message
    assert not slurm.queue()  # nothing was queued


@pytest.mark.slow
def test_isolated_environment_runs_on_slurm_workers_from_its_own_python(slurm, base_env, tmp_path, monkeypatch):
    """A card with `requires` on --cluster slurm: the jobs start the environment's interpreter
    (dask-jobqueue's python=), and give what the shared environment gives in-process."""
    from mlip_zoo.evaluators.runner import RunOptions, evaluate
    from mlip_zoo.zoo import envs
    from mlip_zoo.zoo.card import read_card
    from mlip_zoo.zoo.envs import environment_for

    monkeypatch.setenv("MLIPZOO_ENVS", str(tmp_path / "envs"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # ase is already there: the build downloads nothing
    monkeypatch.setattr(envs, "mlip_zoo_source_hash", lambda: "mlip-zoo under test")  # edits elsewhere: no rebuild
    monkeypatch.setenv("PYTHONPATH", base_env["PYTHONPATH"])  # the jobs import fake_calcs
    witness = tmp_path / "witness.txt"
    monkeypatch.setenv("MLIPZOO_TEST_WITNESS", str(witness))
    (tmp_path / "witness-emt.yaml").write_text(textwrap.dedent("""\
        key: witness-emt
        name: EMT that says which Python runs it
        version: "1"
        family: ase
        calculator: "fake_calcs:WitnessEMT"
        license: MIT
        targets: EFS
        requires: ["ase>=3.23"]
        """))
    card = read_card(tmp_path / "witness-emt.yaml")
    config = slurm_config(tmp_path / "slurm.yaml", jobs=1)
    isolated = evaluate(card, "oc20-s2ef", RunOptions(out=tmp_path / "iso", limit=60, env="isolated",
                                                      cluster="slurm", cluster_config=config)).model_dump(mode="json")
    env = environment_for(card)
    runs = [line.split() for line in witness.read_text().splitlines()]
    assert runs and all(python == str(env.python) and job != "-" for python, job in runs), runs
    witness.unlink()
    shared = evaluate(card, "oc20-s2ef", RunOptions(out=tmp_path / "shared", limit=60, env="shared",
                                                    workers=0)).model_dump(mode="json")
    assert [line.split()[0] for line in witness.read_text().splitlines()] == [sys.executable]
    assert isolated["provenance"]["environment"]["hash"] == env.hash
    same_numbers(isolated, shared)
