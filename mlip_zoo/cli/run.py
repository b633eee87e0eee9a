"""``mlipzoo eval`` (one model on one task) and ``mlipzoo run`` (a run config, then the site):
options in, ``leaderboard.runs`` does the work, rich shows its progress and the summary."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from mlip_zoo.cli.common import JsonOpt, emit_json, err, escape, fail, out, quiet_stdout
from mlip_zoo.cli.leaderboard import build_site_or_fail
from mlip_zoo.errors import MlipZooError


class ConsoleReporter:
    """``leaderboard.runs.Reporter`` on the terminal: progress bars, spinners and warnings on
    stderr. Same methods, not a subclass, so importing the CLI never imports the runner."""

    def quiet(self):
        return quiet_stdout()

    def progress(self, total: int | None, label: str):
        return _progress_bar(total, label)

    @contextlib.contextmanager
    def building_environment(self, card):
        with err.status(f"building the environment of {card.key} ({', '.join(card.requires)}) …") as status:
            yield lambda message: status.update(escape(message))

    def environment_built(self, card, env) -> None:
        err.print(f"[green]environment[/] {card.key}: {escape(str(env.path))} "
                  f"({env.info()['build_seconds']:.0f} s)", highlight=False)

    def warning(self, message: str) -> None:
        err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)

    def pair_failed(self, model: str, task: str, exc: Exception) -> None:
        err.print(f"[red]failed[/] {model} × {task}: {escape(str(exc))}", highlight=False)


@contextlib.contextmanager
def _progress_bar(total: int | None, label: str):
    """A progress bar on stderr while it is open; yields the ``(done, failed)`` update callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("[red]{task.fields[failed]} failed"), TextColumn("{task.fields[rate]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False)
    task_id = progress.add_task(label, total=total, failed=0, rate="")
    started = time.perf_counter()
    counts = {"done": 0, "failed": 0}

    def update(ok: int, failed: int) -> None:
        counts["done"] += ok + failed
        counts["failed"] += failed
        rate = counts["done"] / max(time.perf_counter() - started, 1e-9)
        progress.update(task_id, completed=counts["done"], failed=counts["failed"], rate=f"{rate:.3g}/s")

    with progress:
        yield update


def _summary(record) -> str:
    """The headline cell of a result (a ResultRecord): its number with the interval, or its pipeline checks."""
    from mlip_zoo.evaluators.base import load_task_config
    from mlip_zoo.evaluators.pipeline import label_check
    from mlip_zoo.leaderboard.runs import failed_checks

    config = load_task_config(record.task)
    checked = label_check(config, record.model, record.dataset.labelled_by, record.metrics)
    if checked is not None:  # the model that made the labels: "exact within 1e-09", not a round-off figure
        if failed := failed_checks(record):
            return "[red]pipeline check FAILED[/]: " + escape(failed)
        tolerance = {f"{c.tolerance:.0e}" for c in checked}
        return f"pipeline check: {len(checked)} metrics exact within {'/'.join(sorted(tolerance))}"
    value = record.metrics.get(config.headline)
    shown = "n/a" if value is None else f"{value:.4g}"
    interval = record.intervals.get(config.headline)
    if interval:
        shown += f" [{interval[0]:.4g}, {interval[1]:.4g}]"
    if labeller := record.dataset.labelled_by:  # distance to EMT's labels, not a quality measure
        shown += f" vs {labeller}'s labels (pipeline check)"
    return f"{config.metrics[config.headline].label} = {shown}"


WandbOpt = Annotated[str, typer.Option("--wandb", help="offline (write the run under OUT/wandb; `wandb sync` later), online, or disabled.")]
WorkersOpt = Annotated[int, typer.Option(min=0, help="Dask worker processes on this machine; 0 runs in-process.")]
DeviceOpt = Annotated[str, typer.Option(help="auto (a GPU if torch sees one), cpu or cuda[:N].")]
EnvOpt = Annotated[str, typer.Option("--env", help="Where a card with `requires` runs: auto (its own environment when this "
                                     "one lacks its packages), isolated (always its own), shared (always here). "
                                     "See `mlipzoo env --help`.")]


def _env_mode(mode: str) -> str:
    if mode not in ("auto", "shared", "isolated"):
        raise fail(ValueError(f"--env must be auto, shared or isolated, not {mode!r}"), 2)
    return mode


def _wandb_mode(mode: str) -> str:
    if mode not in ("offline", "online", "disabled"):
        raise fail(ValueError(f"--wandb must be offline, online or disabled, not {mode!r}"), 2)
    return mode


def eval_(
    model: Annotated[str, typer.Argument(help="Model card key (mlipzoo models list).")],
    task: Annotated[str, typer.Argument(help="Task key (mlipzoo tasks list).")],
    dataset: Annotated[Optional[Path], typer.Option(
        help="Your own dataset (a file, or a folder: OC20 raw S2EF, WBM, LMDB) instead of the task's embedded one.")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Results folder: writes OUT/MODEL/TASK.json and .parquet.")] = Path("results"),
    device: DeviceOpt = "cpu",
    workers: WorkersOpt = 1,
    scheduler: Annotated[Optional[str], typer.Option(help="Address of a running Dask scheduler to use.")] = None,
    cluster: Annotated[str, typer.Option(help="local, or slurm (via dask-jobqueue; needs --cluster-config).")] = "local",
    cluster_config: Annotated[Optional[Path], typer.Option(help="YAML of SLURMCluster arguments (+ jobs: N).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N structures (quick looks; recorded in the result).")] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow legacy OC20 LMDBs (unpickling runs code).")] = False,
    reference: Annotated[Optional[Path], typer.Option(help="ood-shift/ttr: your own labelled training set "
                                                           "(any dataset format) to measure shift against.")] = None,
    align: Annotated[Optional[bool], typer.Option("--align/--no-align", help="oc20-s2ef/oc20-is2re: score the "
                                                 "energies also after a per-element linear reference fitted on the "
                                                 "task's calibration subset (*_aligned metrics; on by default), or not. "
                                                 "Without it, a model whose energies are of another kind than the "
                                                 "dataset's (total vs adsorption, no reference) is refused.")] = None,
    wandb: WandbOpt = "offline",
    env: EnvOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Evaluate one model on one task and write its result record.

    The dataset is streamed and cut into atom-balanced shards that run on Dask; each finished
    shard is saved, so rerunning the same command after an interruption resumes. Structures that
    fail (model error, NaN, element not covered) are listed in the result, never fatal.
    """
    from mlip_zoo.evaluators.runner import RunOptions
    from mlip_zoo.leaderboard.runs import evaluate_one, with_alignment, with_reference

    try:
        opts = RunOptions(out=out_dir, dataset=dataset, device=device, workers=workers, scheduler=scheduler,
                          cluster=cluster, cluster_config=cluster_config, limit=limit, trust_pickle=trust_pickle,
                          env=_env_mode(env))
        protocol = with_reference(task, reference) if reference else task
        if align is not None:
            protocol = with_alignment(protocol, align)
        record = evaluate_one(model, protocol, opts, _wandb_mode(wandb), ConsoleReporter())
    except MlipZooError as exc:
        raise fail(exc) from None
    if as_json:
        return emit_json(record.model_dump(mode="json"))
    out.print(f"[green]done[/] {model} × {task}: {_summary(record)}  "
              f"({record.n_structures} structures, {record.n_failed} failed) -> "
              f"{escape(str(opts.out / model / (task + '.json')))}", highlight=False)


def run(
    config: Annotated[Optional[Path], typer.Argument(help="Run config YAML (default: the embedded configs/default.yaml).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Results folder (overrides the config's).")] = None,
    device: DeviceOpt = "cpu",
    workers: Annotated[Optional[int], typer.Option(min=0, help="Dask workers (overrides the config's; 0 runs in-process).")] = None,
    site: Annotated[Path, typer.Option(help="Where to build the leaderboard site at the end.")] = Path("site"),
    wandb: Annotated[Optional[str], typer.Option("--wandb", help="offline, online or disabled (overrides the config's; default offline).")] = None,
    env: Annotated[Optional[str], typer.Option("--env", help="auto, isolated or shared (overrides the config's `env`; "
                                               "default auto): where models with `requires` run.")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Address of a running Dask scheduler to use.")] = None,
    cluster: Annotated[str, typer.Option(help="local, or slurm (via dask-jobqueue; needs --cluster-config).")] = "local",
    cluster_config: Annotated[Optional[Path], typer.Option(help="YAML of SLURMCluster arguments (+ jobs: N).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The main job: every model x task listed in the run config, a summary table, then the site.

    A failed (model, task) pair is reported and the others still run; rerunning resumes. Models
    whose packages conflict with this environment's run in their own (`mlipzoo env --help`), on
    Dask workers started from that environment's Python, kept for the whole run.
    """
    from mlip_zoo.leaderboard.runs import default_run_config, read_run_config, run_config

    path = config or default_run_config()
    try:
        plan = read_run_config(path)
    except MlipZooError as exc:
        raise fail(exc) from None
    out_dir = out_dir or Path(plan.get("out", "results"))
    n_workers = workers if workers is not None else int(plan.get("workers", 1))
    wandb_mode = _wandb_mode(wandb or plan.get("wandb", "offline"))
    env_mode = _env_mode(env or plan.get("env", "auto"))
    try:  # a lost cluster (or a bad --cluster option) ends the run; a failed pair does not
        records, errors = run_config(plan, out=out_dir, device=device, workers=n_workers, wandb_mode=wandb_mode,
                                     env_mode=env_mode, reporter=ConsoleReporter(), scheduler=scheduler,
                                     cluster=cluster, cluster_config=cluster_config)
    except MlipZooError as exc:
        raise fail(exc) from None
    index = build_site_or_fail(out_dir, site)
    if as_json:
        emit_json({"results": [r.model_dump(mode="json") for r in records], "errors": errors,
                   "site": str(index.resolve())})
    else:
        table = Table(title=f"mlip-zoo run ({path.name}) -> {out_dir}")
        for col in ("model", "task", "headline", "structures", "failed", "wall s"):
            table.add_column(col)
        for r in records:
            table.add_row(r.model, r.task, _summary(r), str(r.n_structures), str(r.n_failed),
                          f"{r.provenance.wall_time_s:.1f}")
        for e in errors:
            table.add_row(e["model"], e["task"], "[red]error[/]", "-", "-", "-")
        out.print(table)
        out.print(f"[green]leaderboard[/] file://{escape(str(index.resolve()))}", highlight=False)
    if errors:
        raise typer.Exit(1)
