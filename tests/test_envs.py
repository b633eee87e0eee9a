"""Isolated per-model environments (zoo/envs.py): building, reuse, failure, and one ``mlipzoo run``
that evaluates MACE (mace-torch pins e3nn 0.4.4) in its own environment next to SevenNet-0
(e3nn >= 0.5) in this one."""

from __future__ import annotations

import itertools
import json
import math
import site
import subprocess
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlip_zoo.cli import app
from mlip_zoo.errors import CardError, ConfigError, EnvBuildError
from mlip_zoo.zoo import envs
from mlip_zoo.zoo.card import get_card, read_card
from mlip_zoo.zoo.envs import ensure_environment, env_hash, environment_for, needs_environment

from labels import near_label

cli = CliRunner()
COMMIT = "7" * 40
MACE = "mace-torch==0.3.16"


def _card(card_dir, key="iso", requires=(MACE,), extra=""):
    card_dir(key, f"""\
        key: {key}
        name: isolated test model
        version: "0"
        family: mace
        license: MIT
        targets: EFS
        requires: {json.dumps(list(requires))}
        weights: unavailable
        unavailable_reason: only its environment is tested here
        {extra}""")
    return read_card(card_dir.dir / f"{key}.yaml")


def _parent_packages() -> set[str]:
    """What is installed in the environment running the tests (must never change)."""
    return {p.name for d in site.getsitepackages() for p in Path(d).glob("*.dist-info")}


@pytest.fixture
def envs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MLIPZOO_ENVS", str(tmp_path / "envs"))
    return tmp_path / "envs"


def test_card_requires_and_python_are_checked(card_dir):
    assert _card(card_dir, extra='python: "3.11"').python == "3.11"
    with pytest.raises(CardError, match=r"requires: .*entry 0 \('mace-torch=>0.3'\) is not a pip requirement"):
        _card(card_dir, key="bad-req", requires=["mace-torch=>0.3"])
    with pytest.raises(CardError, match=r"python: .*'three' is not a Python version"):
        _card(card_dir, key="bad-py", extra="python: three")


def test_env_mode_is_checked_on_the_command_line():
    result = cli.invoke(app, ["eval", "emt", "oc20-s2ef", "--env", "separate"])
    assert result.exit_code == 2 and "--env must be auto, shared or isolated, not 'separate'" in result.stderr


def test_auto_isolates_only_what_this_environment_cannot_run(card_dir):
    sevennet, emt = get_card("sevennet-0"), get_card("emt")
    assert not needs_environment(sevennet, "auto")  # sevenn is installed here
    assert needs_environment(sevennet, "isolated") and not needs_environment(sevennet, "shared")
    assert not any(needs_environment(emt, mode) for mode in ("auto", "isolated"))  # nothing to install
    absent = _card(card_dir, key="absent", requires=["mlipzoo-test-absent==1.0"])
    assert needs_environment(absent, "auto") and not needs_environment(absent, "shared")
    assert needs_environment(_card(card_dir, key="old-py", requires=[], extra='python: "3.6"'), "auto")


def test_env_identity_follows_requirements_and_mlip_zoo(card_dir, monkeypatch):
    first = _card(card_dir, key="a")
    assert env_hash(first) == env_hash(_card(card_dir, key="b"))  # same requirements, same environment
    changed = _card(card_dir, key="c", requires=[MACE, "torch-ema>=0.3"])
    assert env_hash(changed) != env_hash(first)
    pins = envs.env_identity(first)["pins"]
    assert {"dask", "distributed", "cloudpickle", "torch"} <= set(pins)  # the machine's torch, unless named
    assert "torch" not in envs.env_identity(_card(card_dir, key="d", requires=["torch>=2"]))["pins"]
    before = env_hash(first)
    monkeypatch.setattr(envs, "mlip_zoo_source_hash", lambda: "an edited mlip-zoo")
    assert env_hash(first) != before


@pytest.mark.parametrize(("requires", "failing", "says", "pip_says"), [
    (["mlipzoo-test-absent==1.0"], "mlipzoo-test-absent==1.0", "no version of mlipzoo-test-absent==1.0 can be installed",
     "No matching distribution found"),
    # A model that pins another dask than the one the driver runs could not talk to its scheduler.
    (["dask==2024.8.0"], "dask==2024.8.0", "dask==2024.8.0 cannot be installed together", "ResolutionImpossible"),
], ids=["missing", "conflict"])
def test_failed_build_names_the_requirement_and_the_log(card_dir, envs_dir, monkeypatch, requires, failing, says,
                                                        pip_says):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # offline: nothing to download, so the failure is certain
    card = _card(card_dir, key="broken", requires=requires)
    parent = _parent_packages()
    with pytest.raises(EnvBuildError) as info:
        ensure_environment(card)
    err = info.value
    assert err.requirement == failing
    assert says in str(err)
    assert str(err.log) in str(err) and pip_says in Path(err.log).read_text()
    assert str(card.path) in str(err)  # where to fix it
    assert not environment_for(card).path.exists()  # no half-built environment left to be reused
    assert _parent_packages() == parent

    result = cli.invoke(app, ["env", "create", "broken", "--json"], env={"MLIPZOO_CARDS": str(card_dir.dir)})
    assert result.exit_code == 1
    (row,) = json.loads(result.stdout)
    assert row["requirement"] == failing and row["log"].endswith(".log")


def test_python_the_machine_cannot_layer_is_a_clear_error(card_dir, envs_dir):
    card = _card(card_dir, key="py36", extra='python: "3.6"')
    with pytest.raises(EnvBuildError, match=r"asks for python '3.6', but mlip-zoo runs on Python 3\.") as info:
        ensure_environment(card)
    assert info.value.requirement == "python3.6"


def test_isolated_model_on_slurm_runs_the_environments_python(card_dir, envs_dir, tmp_path):
    from mlip_zoo.evaluators.runner import Clusters, RunOptions

    config = tmp_path / "slurm.yaml"
    config.write_text("queue: q\ncores: 1\nmemory: 1GB\npython: /shared/main/bin/python\njobs: 0\n"
                      "scheduler_options: {dashboard_address: ':0'}\n")
    env = environment_for(_card(card_dir))
    with Clusters(RunOptions(cluster="slurm", cluster_config=config)) as clusters:
        clusters.client(env)
        ((_, cluster),) = clusters._clients.values()
        assert f"{env.python} -m distributed.cli.dask_worker" in cluster.job_script()
    with Clusters(RunOptions(scheduler="tcp://127.0.0.1:1")) as clusters, \
            pytest.raises(ConfigError, match="workers of the scheduler at tcp://127.0.0.1:1 run another interpreter"):
        clusters.client(env)


@pytest.mark.slow
def test_isolated_run_gives_what_the_shared_environment_gives(card_dir, envs_dir, tmp_path, monkeypatch):
    """Same card, same task: shards run by workers started from an environment's interpreter come
    back with the same metrics, failures and progress as in-process here."""
    from mlip_zoo.evaluators.runner import RunOptions, evaluate

    monkeypatch.setenv("PIP_NO_INDEX", "1")  # ase is already there: the build downloads nothing
    # Edits elsewhere in a working tree during the test must not rebuild the environment.
    monkeypatch.setattr(envs, "mlip_zoo_source_hash", lambda: "mlip-zoo under test")
    card_dir("emt-iso", """\
        key: emt-iso
        name: EMT, in an environment of its own
        version: "1"
        family: emt
        license: MIT
        targets: EFS
        elements: [Al, Ni, Pt, H, O, C]
        requires: ["ase>=3.23"]
        """)  # leaves out Ag and N, so some structures fail
    card = read_card(card_dir.dir / "emt-iso.yaml")
    assert not needs_environment(card, "auto") and needs_environment(card, "isolated")

    def run(mode, out):
        counts = []
        opts = RunOptions(out=tmp_path / out, workers=0, limit=24, env=mode)
        return evaluate(card, "oc20-s2ef", opts, progress=lambda ok, failed: counts.append((ok, failed))), counts

    shared, shared_progress = run("shared", "shared")
    isolated, isolated_progress = run("isolated", "isolated")
    assert isolated.provenance.environment["hash"] == environment_for(card).hash
    assert 0 < isolated.n_failed < isolated.n_structures == 24
    assert isolated.failures == shared.failures and isolated.metrics == shared.metrics
    assert near_label(isolated.metrics["energy_mae"], "oc20-s2ef", "energy_mae")  # EMT labelled the set
    total = lambda counts: tuple(map(sum, zip(*counts)))  # noqa: E731
    assert total(isolated_progress) == total(shared_progress) == (24 - shared.n_failed, shared.n_failed)


@pytest.mark.slow
def test_an_environment_whose_workers_cannot_start_is_a_clear_error(card_dir, envs_dir, tmp_path, monkeypatch):
    from mlip_zoo.errors import EnvError
    from mlip_zoo.evaluators.runner import RunOptions, evaluate

    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setattr(envs, "mlip_zoo_source_hash", lambda: "mlip-zoo under test")
    card_dir("emt-broken", """\
        key: emt-broken
        name: EMT, in an environment that is then broken
        version: "1"
        family: emt
        license: MIT
        targets: EFS
        requires: ["ase>=3.23"]
        """)
    card = read_card(card_dir.dir / "emt-broken.yaml")
    env, _ = ensure_environment(card)
    # Something in the environment shadows distributed, so no worker can start from it.
    site_dir = next(env.path.glob("lib/python*/site-packages"))
    (site_dir / "distributed").mkdir()
    (site_dir / "distributed" / "__init__.py").write_text("raise ImportError('shadowed by a broken package')\n")
    with pytest.raises(EnvError, match=r"emt-broken: the Dask workers started from .* did not start: a worker "
                                       r"exited with code \d+\. Their output is in .*workers\.log"):
        evaluate(card, "oc20-s2ef", RunOptions(out=tmp_path / "out", workers=1, limit=2, env="isolated"))
    assert "shadowed by a broken package" in (env.path / "workers.log").read_text()


# ---------------------------------------------------------------------------------------------
# The real thing: MACE in its own environment, SevenNet-0 in this one, one `mlipzoo run`.

# Run by the MACE environment's Python: a small, freshly initialised MACE, saved whole as mace-torch
# saves its models (the way MACECalculator loads them).
MAKE_TINY_MACE = """
import sys
import numpy as np
import torch
from mace import modules  # first: mace lets e3nn 0.4.4 load its constants under torch>=2.6
from e3nn import o3
from ase.data import atomic_numbers

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)
zs = sorted(atomic_numbers[s] for s in sys.argv[2].split(","))
block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
model = modules.ScaleShiftMACE(
    r_max=4.0, num_bessel=4, num_polynomial_cutoff=5, max_ell=1, interaction_cls=block,
    interaction_cls_first=block, num_interactions=2, num_elements=len(zs),
    hidden_irreps=o3.Irreps("8x0e + 8x1o"), MLP_irreps=o3.Irreps("8x0e"), gate=torch.nn.functional.silu,
    atomic_energies=np.zeros(len(zs)), avg_num_neighbors=8.0, atomic_numbers=zs, correlation=2,
    atomic_inter_scale=1.0, atomic_inter_shift=0.0)
torch.save(model, sys.argv[1])
"""


def _first_structures(n):
    from mlip_zoo.evaluators.base import load_task_config
    from mlip_zoo.evaluators.data import iter_records, resolve_dataset

    config = load_task_config("oc20-s2ef")
    records = iter_records(resolve_dataset(config.dataset, config.dataset_file, None).path)
    return list(itertools.islice(records, n))


@pytest.mark.slow
def test_mace_in_its_own_environment_next_to_sevennet_in_one_run(card_dir, envs_dir, fake_hub, tmp_path,
                                                                  monkeypatch):
    from mlip_zoo.zoo.weights import sha256_of

    monkeypatch.setenv("MLIPZOO_CARDS", str(card_dir.dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # Held fixed so that edits elsewhere in a working tree during the test cannot rebuild the
    # environment (test_env_identity_follows_requirements_and_mlip_zoo covers that they do).
    monkeypatch.setattr(envs, "mlip_zoo_source_hash", lambda: "mlip-zoo under test")
    parent = _parent_packages()
    structures = _first_structures(6)
    # The card leaves out one element of these structures: those come back as failures, from the
    # isolated workers, exactly as a shared-environment model reports them.
    elements = sorted({s for atoms in structures for s in atoms.get_chemical_symbols()})
    left_out = next(e for e in elements if 0 < sum(e in a.get_chemical_symbols() for a in structures) < 6)
    covered = [e for e in elements if e != left_out]

    def write_card(requires, sha):
        card_dir("tiny-mace", f"""\
            key: tiny-mace
            name: tiny MACE (random weights, made by the test)
            version: "0"
            family: mace
            license: MIT
            targets: EFS
            elements: {json.dumps(covered)}
            requires: {json.dumps(requires)}
            trusted: true
            trusted_reason: a freshly initialised model this test saved itself
            weights:
              - {{filename: tiny.model, hf_repo: test-org/tiny-mace, revision: "{COMMIT}", sha256: "{sha}"}}
            """)

    write_card([MACE], "0" * 64)
    created = cli.invoke(app, ["env", "create", "tiny-mace", "--json"])
    assert created.exit_code == 0, created.output
    (row,) = json.loads(created.stdout)
    assert row["built"] and row["ok"]
    print(f"\nbuilt the {MACE} environment in {row['build_seconds']} s")
    env_python = row["python"]
    versions = json.loads(subprocess.run(
        [env_python, "-c", "import importlib.metadata as m, json; "
                           "print(json.dumps({n: m.version(n) for n in ('e3nn', 'mace-torch', 'torch')}))"],
        capture_output=True, text=True, check=True).stdout)
    import e3nn
    import torch

    assert versions["e3nn"] == "0.4.4" and versions["mace-torch"] == "0.3.16"
    assert versions["torch"] == torch.__version__  # the machine's torch, not a download
    assert tuple(map(int, e3nn.__version__.split(".")[:2])) >= (0, 5)  # this environment keeps its own

    model = tmp_path / "tiny.model"
    subprocess.run([env_python, "-c", MAKE_TINY_MACE, str(model), ",".join(covered)], check=True,
                   capture_output=True)
    fake_hub.add_file("test-org/tiny-mace", "tiny.model", model.read_bytes(), commit=COMMIT)
    write_card([MACE], sha256_of(model))

    plan = tmp_path / "plan.yaml"
    plan.write_text(textwrap.dedent("""\
        workers: 1
        wandb: disabled
        runs:
          - {models: [tiny-mace, sevennet-0], tasks: [oc20-s2ef], limit: 6}
        """))
    args = ["run", str(plan), "--out", str(tmp_path / "out"), "--site", str(tmp_path / "site"), "--json"]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert not report["errors"]
    records = {r["model"]: r for r in report["results"]}
    mace, sevennet = records["tiny-mace"], records["sevennet-0"]
    n_left_out = sum(left_out in a.get_chemical_symbols() for a in structures)
    assert mace["n_structures"] == sevennet["n_structures"] == 6
    assert mace["n_failed"] == n_left_out and sevennet["n_failed"] == 0
    assert all(left_out in f["reason"] for f in mace["failures"])
    assert math.isfinite(mace["metrics"]["forces_mae"]) and math.isfinite(sevennet["metrics"]["forces_mae"])
    # Each number records the packages it was computed with.
    assert mace["provenance"]["packages"]["e3nn"] == "0.4.4"
    assert mace["provenance"]["packages"]["mace-torch"] == "0.3.16"
    assert mace["provenance"]["environment"]["hash"] == row["hash"]
    assert sevennet["provenance"]["packages"]["e3nn"] == e3nn.__version__
    assert "environment" not in sevennet["provenance"]
    assert json.loads((tmp_path / "out" / "tiny-mace" / "oc20-s2ef.json").read_text())["metrics"] == mace["metrics"]

    # A second run reuses the environment (and the finished shards): no rebuild.
    info = json.loads((Path(row["path"]) / "mlipzoo-env.json").read_text())
    again = cli.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads((Path(row["path"]) / "mlipzoo-env.json").read_text()) == info
    assert [p.name for p in envs_dir.iterdir() if p.is_dir() and p.name != "logs"] == [Path(row["path"]).name]
    assert {r["model"]: r["metrics"] for r in json.loads(again.stdout)["results"]} == \
        {k: r["metrics"] for k, r in records.items()}

    # A changed requirement builds a new environment; the old one is then stale.
    write_card([MACE, "torch-ema>=0.3"], sha256_of(model))
    (rebuilt,) = json.loads(cli.invoke(app, ["env", "create", "tiny-mace", "--json"]).stdout)
    assert rebuilt["built"] and rebuilt["path"] != row["path"]
    listed = {r["path"]: r["state"] for r in json.loads(cli.invoke(app, ["env", "list", "--json"]).stdout)}
    assert listed == {row["path"]: "stale", rebuilt["path"]: "current"}
    removed = json.loads(cli.invoke(app, ["env", "remove", "--stale", "--json"]).stdout)["removed"]
    assert removed == [row["path"]] and Path(rebuilt["path"]).exists()

    assert _parent_packages() == parent  # nothing was installed into, or removed from, this environment
