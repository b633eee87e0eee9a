"""Per-model Python environments, so model families with conflicting pins run side by side.

A card's ``requires`` (pip requirement strings) and optional ``python`` define its environment:
a virtual environment under ``MLIPZOO_ENVS`` (default ``<cache>/envs``), named by the card key and
a hash of everything it was resolved against. It is *layered*: its own site-packages come first
(so mace-torch's ``e3nn==0.4.4`` wins there), then, through a ``.pth`` file, the site-packages of
the interpreter running mlip-zoo. That is how it gets the machine's torch (never a multi-GB CUDA
wheel from PyPI), and the very same mlip-zoo, dask, distributed and cloudpickle, which Dask needs
identical on both ends of a connection. pip runs inside the new environment, so it never touches
the parent's files (it declines to uninstall anything outside its own prefix), and a constraints
file keeps the machine's torch and numpy (unless the card names them) and the Dask stack pinned.

The hash covers the requirements, the Python spec, the interpreter, the parent's site-packages
and pinned versions, and mlip-zoo itself (version and a hash of its source), because the
environment is resolved against mlip-zoo's own dependencies and runs its code: a change to any of
them gives a new environment; an unchanged one is reused. Building is locked, so concurrent runs
build once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import site
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from mlip_zoo.errors import EnvBuildError
from mlip_zoo.zoo.card import ModelCard, python_specifier
from mlip_zoo.zoo.weights import atomic_write_text, cache_dir

ENVS_ENV = "MLIPZOO_ENVS"
EnvMode = Literal["auto", "shared", "isolated"]
ENV_MODES = ("auto", "shared", "isolated")
_LAYOUT = 1  # bump when the way environments are built changes
_INFO = "mlipzoo-env.json"  # written last: an environment without it is unfinished and rebuilt
_PARENT_PTH = "mlipzoo-parent.pth"
# Must match the driver exactly: the scheduler and workers exchange pickles and messages.
PROTOCOL_PACKAGES = ("dask", "distributed", "cloudpickle", "msgpack")
# The machine provides these (torch: the build that fits its hardware; numpy: the ABI every
# compiled package of the parent layer was built against); kept unless the card names them.
MACHINE_PACKAGES = ("torch", "numpy")


def envs_dir() -> Path:
    """Where environments live; on a cluster, point ``MLIPZOO_ENVS`` at a shared filesystem."""
    return Path(os.environ.get(ENVS_ENV) or cache_dir() / "envs").expanduser()


def _requirements(card: ModelCard) -> list[Requirement]:
    return [Requirement(r) for r in card.requires]


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def unmet_requirements(card: ModelCard) -> list[str]:
    """The card's requirements this interpreter does not satisfy (markers honoured)."""
    unmet = []
    for req in _requirements(card):
        if req.marker is not None and not req.marker.evaluate():
            continue
        version = _installed(req.name)
        if version is None or (req.specifier and not req.specifier.contains(Version(version), prereleases=True)):
            unmet.append(str(req))
    if card.python and not python_specifier(card.python).contains(_python_version(), prereleases=True):
        unmet.append(f"python{card.python}")
    return unmet


def needs_environment(card: ModelCard, mode: EnvMode) -> bool:
    """``shared`` never isolates; ``isolated`` does whenever the card has requirements; ``auto``
    only when this interpreter does not already satisfy them (so an installed SevenNet runs here,
    and MACE, whose e3nn pin conflicts, gets its own environment)."""
    if mode not in ENV_MODES:
        raise ValueError(f"unknown environment mode {mode!r}: use auto, shared or isolated")
    if mode == "shared" or not (card.requires or card.python):
        return False
    return mode == "isolated" or bool(unmet_requirements(card))


# ---------------------------------------------------------------------------------------------
# Identity


def _python_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))


def _parent_site_dirs() -> list[str]:
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.append(site.getusersitepackages())
    return [d for d in dirs if os.path.isdir(d)]


def mlip_zoo_source_hash() -> str:
    """sha256 over mlip-zoo's installed source (every .py under its packages), so an edit or an
    upgrade of mlip-zoo is seen even when the version string stays the same."""
    # Located, not imported: zoo imports nothing of evaluators or leaderboard.
    roots = {Path(p).resolve() for name in ("mlip_zoo", "mlip_zoo.zoo", "mlip_zoo.evaluators", "mlip_zoo.leaderboard")
             for p in importlib.util.find_spec(name).submodule_search_locations}
    h = hashlib.sha256()
    for root in sorted(roots):
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            h.update(f"{root.name}/{path.relative_to(root).as_posix()}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _pins(card: ModelCard) -> dict[str, str]:
    named = {canonicalize_name(r.name) for r in _requirements(card)}
    pins = {}
    for name in PROTOCOL_PACKAGES + MACHINE_PACKAGES:
        if name in MACHINE_PACKAGES and canonicalize_name(name) in named:
            continue  # the card chose its own (may download it)
        version = _installed(name)
        if version:
            pins[name] = version
    return pins


def _own_requirements() -> list[str]:
    """mlip-zoo's own (non-extra) dependencies: resolved together with the card's, so a card that
    would break mlip-zoo fails at build time, naming the clash."""
    reqs = [Requirement(r) for r in importlib.metadata.requires("mlip-zoo") or []]
    return [str(r) for r in reqs if r.marker is None or "extra" not in str(r.marker)]


def env_identity(card: ModelCard) -> dict:
    return {
        "layout": _LAYOUT,
        "requires": sorted(card.requires),
        "python": card.python,
        "interpreter": {"version": _python_version(), "base": os.path.realpath(sys._base_executable)},
        "parent": _parent_site_dirs(),
        "pins": _pins(card),
        "mlip_zoo": {"version": _installed("mlip-zoo") or "source", "source": mlip_zoo_source_hash()},
    }


def env_hash(card: ModelCard) -> str:
    return hashlib.sha256(json.dumps(env_identity(card), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Environment:
    key: str
    hash: str
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def info_path(self) -> Path:
        return self.path / _INFO

    @property
    def log(self) -> Path:
        return envs_dir() / "logs" / f"{self.path.name}.log"

    @property
    def built(self) -> bool:
        return self.info_path.exists() and self.python.exists()

    def info(self) -> dict:
        return json.loads(self.info_path.read_text())


def environment_for(card: ModelCard) -> Environment:
    """Where ``card``'s environment lives (whether or not it is built yet)."""
    digest = env_hash(card)
    return Environment(card.key, digest, envs_dir() / f"{card.key}-{digest[:12]}")


# ---------------------------------------------------------------------------------------------
# Building


def ensure_environment(card: ModelCard, *, echo=None) -> tuple[Environment, bool]:
    """The built environment for ``card``, and whether it was built now (False: reused)."""
    env = environment_for(card)
    if env.built:
        return env, False
    env.path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(env.path.parent / f".{env.path.name}.lock"):
        if env.built:  # another process built it while we waited
            return env, False
        _build(card, env, echo or (lambda message: None))
    return env, True


@contextlib.contextmanager
def _locked(path: Path):
    import fcntl

    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(card: ModelCard, env: Environment, echo) -> None:
    t0 = time.perf_counter()
    if card.python and not python_specifier(card.python).contains(_python_version(), prereleases=True):
        raise EnvBuildError(
            f"{card.key}: its card asks for python {card.python!r}, but mlip-zoo runs on Python {_python_version()}. "
            "Model environments are layered on this interpreter's packages (that is how they reuse the machine's "
            f"torch), so they share its Python: run mlip-zoo under a matching Python, or widen `python` in "
            f"{card.path or 'the card'}", requirement=f"python{card.python}", log=None)
    if env.path.exists():
        shutil.rmtree(env.path)  # an unfinished build: start over
    env.log.parent.mkdir(parents=True, exist_ok=True)
    identity = env_identity(card)
    with open(env.log, "w", encoding="utf-8") as log:
        log.write(f"# mlip-zoo environment for {card.key}\n{json.dumps(identity, indent=2)}\n")
        log.flush()
        echo(f"creating {env.path}")
        # The parent's pip serves through the layer; a parent without pip gets one in the new env.
        own_pip = [] if importlib.util.find_spec("pip") is None else ["--without-pip"]
        _run([sys._base_executable, "-m", "venv", *own_pip, str(env.path)], log, card, env, "venv")
        site_dir = Path(_run([str(env.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             log, card, env, "venv").strip().splitlines()[-1])
        # site.addsitedir (not a bare path) so the parent's own .pth files work too (editable installs).
        (site_dir / _PARENT_PTH).write_text(
            "".join(f"import site; site.addsitedir({d!r})\n" for d in _parent_site_dirs()))
        constraints = env.path / "mlipzoo-constraints.txt"
        constraints.write_text("".join(f"{name}=={version}\n" for name, version in identity["pins"].items()))
        echo(f"installing {', '.join(card.requires)} (log: {env.log})")
        # pip runs inside the new environment, so it installs into its prefix only.
        _run([str(env.python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
              "--progress-bar", "off", "-c", str(constraints), *card.requires, *_own_requirements()],
             log, card, env, "pip")
        probe = _probe(card, env, log)
    info = {"key": card.key, "hash": env.hash, "requires": card.requires, "python": str(env.python),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": round(time.perf_counter() - t0, 1), "packages": probe["packages"],
            "identity": identity}
    atomic_write_text(env.info_path, json.dumps(info, indent=2) + "\n")


def _run(cmd: list[str], log, card: ModelCard, env: Environment, step: str) -> str:
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "PIP_REQUIRE_VIRTUALENV": "1"})
    log.write(proc.stdout + proc.stderr)
    log.flush()
    if proc.returncode != 0:
        shutil.rmtree(env.path, ignore_errors=True)
        raise _build_error(card, env, step, proc.stdout + proc.stderr)
    return proc.stdout


# What pip says when it fails, and how to find the requirement it is about.
_PIP_FAILURES = (
    (r"No matching distribution found for (\S+)", "no version of {req} can be installed here"),
    (r"Could not find a version that satisfies the requirement (\S+)", "no version of {req} can be installed here"),
    (r"Cannot install (.+?) because these package versions have conflicting dependencies",
     "{req} cannot be installed together with the other requirements or with what mlip-zoo keeps fixed "
     "(dask, distributed, cloudpickle, msgpack; torch and numpy unless the card names them)"),
    (r"Failed to build (?:installable wheels for some pyproject\.toml based projects \()?([^)\s]+)",
     "{req} failed to build"),
    (r"Invalid requirement: '?([^'\n]+)'?", "{req} is not a valid requirement"),
)


def _failing_requirement(output: str) -> tuple[str, str]:
    for pattern, what in _PIP_FAILURES:
        match = re.search(pattern, output)
        if match:
            req = match.group(1).strip().rstrip(".")
            return req, what.format(req=req)
    return "", "pip failed (see the log)"


def _build_error(card: ModelCard, env: Environment, step: str, output: str) -> EnvBuildError:
    if step == "pip":
        req, what = _failing_requirement(output)
    elif step == "import check":  # installed, but does not import: say what Python said
        last = [line for line in output.splitlines() if line.strip()][-1:] or ["(no output)"]
        req, what = "", f"its packages installed, but importing them fails: {last[0].strip()}"
    else:
        req, what = "", f"{step} failed"
    detail = "\n".join(line for line in output.splitlines() if line.strip() and any(
        mark in line for mark in ("ERROR", "error:", "conflict is caused", "requested", " depends on ")))[-1500:]
    where = f"`requires` in {card.path}" if card.path else "the card's `requires`"
    return EnvBuildError(
        f"{card.key}: cannot build its environment: {what}.\n{detail}\n"
        f"Full log: {env.log}. Fix {where} (or install what is missing), then `mlipzoo env create {card.key}`.",
        requirement=req or ", ".join(card.requires), log=env.log)


# Run by the environment's interpreter: what a worker imports must import, and which version of
# every distribution it sees wins (its own site-packages first, then the parent layer).
_PROBE = """
import importlib, importlib.metadata as m, json, re, sys
for module in sys.argv[1:]:
    importlib.import_module(module)
seen = {}
for dist in m.distributions():
    name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
    if name and name not in seen:
        seen[name] = dist.version
print(json.dumps(seen))
"""
_PROBE_IMPORTS = ("mlip_zoo.zoo.registry", "dask.distributed", "pyarrow.parquet", "ase")


def _family_imports(card: ModelCard) -> tuple[str, ...]:
    """The framework modules the card's family adapter imports (its ``IMPORTS``): importing them
    at build time catches an environment whose packages install but cannot load together (e.g. a
    CUDA-linked wheel beside a CPU torch), before any worker is started."""
    import importlib

    from mlip_zoo.zoo.registry import families

    entry = families().get(card.family)
    return tuple(getattr(importlib.import_module(entry.module), "IMPORTS", ())) if entry else ()


def _probe(card: ModelCard, env: Environment, log) -> dict:
    """Check the finished environment from inside: mlip-zoo's worker side imports, every card
    requirement is met, and the Dask stack matches the driver's."""
    versions = json.loads(_run([str(env.python), "-c", _PROBE, *_PROBE_IMPORTS, *_family_imports(card)], log, card,
                               env, "import check").strip().splitlines()[-1])
    for req in _requirements(card):
        have = versions.get(canonicalize_name(req.name))
        if req.marker is not None and not req.marker.evaluate():
            continue
        if have is None or (req.specifier and not req.specifier.contains(Version(have), prereleases=True)):
            shutil.rmtree(env.path, ignore_errors=True)
            raise EnvBuildError(f"{card.key}: the environment was built but has {req.name} {have}, not {req}. "
                                f"Full log: {env.log}", requirement=str(req), log=env.log)
    for name in PROTOCOL_PACKAGES:
        if versions.get(name) != _installed(name):
            shutil.rmtree(env.path, ignore_errors=True)
            raise EnvBuildError(f"{card.key}: the environment has {name} {versions.get(name)} but mlip-zoo runs "
                                f"{_installed(name)}; Dask needs both sides equal. Full log: {env.log}",
                                requirement=name, log=env.log)
    return {"packages": dict(sorted(versions.items()))}


# ---------------------------------------------------------------------------------------------
# Listing and removing


def list_environments(cards: dict[str, ModelCard] | None = None) -> list[dict]:
    """Every built environment, with whether it is current for its card (same hash) or stale."""
    root = envs_dir()
    rows = []
    for info_path in sorted(root.glob(f"*/{_INFO}")):
        info = json.loads(info_path.read_text())
        card = (cards or {}).get(info["key"])
        state = "stale"
        if card is not None and env_hash(card) == info["hash"]:
            state = "current"
        elif card is None and cards is not None:
            state = "orphaned"
        rows.append({"key": info["key"], "hash": info["hash"][:12], "path": str(info_path.parent),
                     "state": state, "requires": info["requires"], "created": info["created"],
                     "build_seconds": info["build_seconds"], "size_mb": round(_size(info_path.parent) / 1e6, 1)})
    return rows


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def remove_environments(keys: list[str] | None = None, *, stale_only: bool = False,
                        cards: dict[str, ModelCard] | None = None) -> list[str]:
    """Delete the environments of ``keys`` (all when None); with ``stale_only``, only those that
    are no longer current for their card. Returns the removed paths."""
    removed = []
    for row in list_environments(cards):
        if (keys is None or row["key"] in keys) and (not stale_only or row["state"] != "current"):
            shutil.rmtree(row["path"])
            (envs_dir() / "logs" / f"{Path(row['path']).name}.log").unlink(missing_ok=True)
            removed.append(row["path"])
    return removed

