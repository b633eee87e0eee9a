"""A private single-node SLURM for the tests: munged, slurmctld and slurmd started as root from
Debian's `slurm-wlm` and `munge`, every file (config, key, sockets, state, logs) under one
directory, on free ports, so nothing on the machine is touched or assumed.

    python slurm_local.py DIR    # start one by hand; prints `export SLURM_CONF=...`, Ctrl-C stops it

Client commands (sbatch, squeue, scancel, as dask-jobqueue calls them) find this cluster through
``SLURM_CONF``; the config names munge's socket (``AuthInfo``), so they authenticate against the
private munged, not a system one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo", "scontrol")


class SlurmUnavailable(RuntimeError):
    """SLURM cannot run here; the message says why (shown as the tests' skip reason)."""


def missing_reason() -> str | None:
    """Why this machine cannot run the private cluster, or None if it can."""
    if os.geteuid() != 0:
        return "needs root to run slurmd (jobs are started as the submitting user)"
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [name for name in DAEMONS + CLIENTS if shutil.which(name, path=path) is None]
    if missing:
        return (f"{', '.join(missing)} not found: install Debian's packages with "
                "`apt-get install -y slurm-wlm munge` (make test does this as root)")
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_facts() -> dict[str, str]:
    """The node's topology and memory as slurmd itself reports them (`slurmd -C`), so the node
    registers as healthy: a config that promises more than slurmd finds gets the node drained."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    facts = dict(kv.split("=", 1) for kv in out.splitlines()[0].split() if "=" in kv)
    facts.pop("NodeName", None)
    facts["RealMemory"] = str(int(int(facts["RealMemory"]) * 0.9))  # headroom: never "Low RealMemory"
    return facts


class LocalSlurm:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.socket = self.root / "munge" / "munge.socket"
        self.jobcomp = self.root / "jobcomp.log"  # one line per finished job (no slurmdbd, so no sacct)
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf),
                    "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> LocalSlurm:
        why = missing_reason()
        if why:
            raise SlurmUnavailable(why)
        for sub in ("munge", "state", "spool", "jobs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)  # munged refuses a socket directory others can write
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.conf.write_text(self._config(_node_facts()))
        try:
            self._spawn("munged", ["munged", "--foreground", "--force", f"--socket={self.socket}",
                                   f"--key-file={key}", f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                                   f"--seed-file={self.root / 'munge' / 'munged.seed'}",
                                   f"--log-file={self.root / 'munged.log'}"])
            self._wait(lambda: self.socket.exists(), timeout, "munged did not create its socket")
            self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-f", str(self.conf)])
            self._wait(lambda: self._ok(["scontrol", "ping"], "UP"), timeout, "slurmctld does not answer `scontrol ping`")
            self._spawn("slurmd", ["slurmd", "-D", "-N", self.host, "-f", str(self.conf)])
            self._wait(self._node_idle, timeout, f"node {self.host} did not become idle in `sinfo`")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Cancel what is left in the queue, then stop the daemons in reverse order."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--user", "root"], env=self.env, capture_output=True, timeout=30)
        for name in reversed(list(self.procs)):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- queries the tests make -----------------------------------------------------------------

    def run(self, *cmd: str) -> str:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=True, timeout=30).stdout

    def queue(self) -> list[dict[str, str]]:
        """Jobs in the queue now: id, name, state."""
        out = self.run("squeue", "--noheader", "--format=%i|%j|%T")
        return [dict(zip(("id", "name", "state"), line.split("|"))) for line in out.splitlines() if line]

    def finished(self) -> list[dict[str, str]]:
        """Every job that has ended, from the job-completion log (slurm's record, as sacct's would be)."""
        if not self.jobcomp.exists():
            return []
        rows = []
        for line in self.jobcomp.read_text().splitlines():
            fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            rows.append({"id": fields.get("JobId"), "name": fields.get("Name"), "state": fields.get("JobState"),
                         "nodes": fields.get("NodeList")})
        return rows

    def logs(self) -> str:
        """The daemons' logs, for a failing test's message."""
        parts = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    # -- internals ------------------------------------------------------------------------------

    def _config(self, node: dict[str, str]) -> str:
        r = self.root
        return f"""\
# Written by tests/slurm_local.py: one node, localhost, no cgroups, nothing outside {r}
ClusterName=mlipzoo-test
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'slurmctld.log'}
SlurmdLogFile={r / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
KillWait=5
MinJobAge=300
DefMemPerCPU=1000
NodeName={self.host} NodeAddr=127.0.0.1 {" ".join(f"{k}={v}" for k, v in node.items())} State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
"""

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / f"{name}.out", "ab")  # noqa: SIM115 (the daemon keeps it)
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def _ok(self, cmd: list[str], needle: str) -> bool:
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)
        return proc.returncode == 0 and needle in proc.stdout

    def _node_idle(self) -> bool:
        return self._ok(["sinfo", "--noheader", "--format=%t"], "idle")

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{dead[0]} exited with code {self.procs[dead[0]].returncode}" if dead else f"not within {timeout:.0f} s"
                raise SlurmUnavailable(f"{what} ({why}); logs under {self.root}:\n{self.logs()}{self._outs()}")
            time.sleep(0.2)

    def _outs(self) -> str:
        return "".join(f"\n--- {p}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(self.root.glob("*.out")))


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops the daemons too, as Ctrl-C does
    with LocalSlurm(Path(sys.argv[1]).resolve()) as slurm:
        print(f"export SLURM_CONF={slurm.conf}", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
