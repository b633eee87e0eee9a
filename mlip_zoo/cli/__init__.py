"""The ``mlipzoo`` command line: it parses options, calls the library and prints. One module per
sub-app (models, env, tasks, data, leaderboard), ``results`` for validate/reproduce/compare,
``run`` for eval/run and ``submit``; ``common`` holds what they share. Heavy imports (torch,
model packages, the runner) happen inside commands, so ``mlipzoo --help`` stays instant."""

from __future__ import annotations

import typer

from mlip_zoo.cli import data, env, leaderboard, models, results, run, submit, tasks

app = typer.Typer(
    help="mlip-zoo: evaluate machine-learned interatomic potentials on standard tasks and publish a leaderboard.\n\n"
         "Start with `mlipzoo models list`, then `mlipzoo models check emt`.",
    no_args_is_help=True, add_completion=False, rich_markup_mode="rich")

# `mlipzoo --help` lists commands, then sub-apps, each in the order they are added here.
app.command("validate")(results.validate)
app.command("reproduce")(results.reproduce)
app.command("compare")(results.compare)
app.command("verify")(results.verify)
app.command("submit")(submit.submit)
app.command("eval")(run.eval_)
app.command("run")(run.run)
app.add_typer(models.app, name="models")
app.add_typer(env.app, name="env")
app.add_typer(leaderboard.app, name="leaderboard")
app.add_typer(tasks.app, name="tasks")
app.add_typer(data.app, name="data")

__all__ = ["app"]
