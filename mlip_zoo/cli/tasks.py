"""``mlipzoo tasks``: list the evaluation tasks and show their protocols."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from mlip_zoo.cli.common import JsonOpt, emit_json, escape, fail, out
from mlip_zoo.errors import MlipZooError

app = typer.Typer(help="Evaluation tasks: list them and read their protocols.", no_args_is_help=True)


@app.command("list")
def tasks_list(as_json: JsonOpt = False) -> None:
    """List every task with its version, default dataset and headline metric."""
    from mlip_zoo.evaluators.base import load_task_config, task_keys

    try:
        configs = [load_task_config(k) for k in task_keys()]
    except MlipZooError as exc:
        raise fail(exc) from None
    if as_json:
        return emit_json([{"key": c.key, "version": c.version, "dataset": c.dataset, "headline": c.headline}
                          for c in configs])
    table = Table(title=f"{len(configs)} tasks")
    for col in ("key", "version", "dataset", "headline metric", "description"):
        table.add_column(col)
    for c in configs:
        spec = c.metrics[c.headline]
        arrow = "↑" if spec.higher_is_better else "↓"
        table.add_row(c.key, c.version, c.dataset, f"{spec.label} {arrow}", c.description[:90])
    out.print(table)


@app.command("show")
def tasks_show(key: Annotated[str, typer.Argument(help="Task key, e.g. oc20-s2ef")], as_json: JsonOpt = False) -> None:
    """Show a task's full protocol: constants, metrics with units and direction, dataset."""
    from mlip_zoo.evaluators.base import load_task_config

    try:
        config = load_task_config(key)
    except MlipZooError as exc:
        raise fail(exc) from None
    data = config.model_dump(mode="json")
    if as_json:
        return emit_json(data)
    import yaml
    out.print(escape(yaml.safe_dump(data, sort_keys=False, allow_unicode=True)), highlight=False)
