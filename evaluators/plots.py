"""What a task's page plots: the data (``Evaluator.plots``, embedded in the page as JSON and drawn
by the site's site.js) and the figures that show it (``Evaluator.figures``, rendered by the task
page's template). Every kind of figure here is one site.js knows how to draw."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

MAX_POINTS = 5000  # per model and plot: keeps pages small and plotly responsive
# The columns the generic plots read (never ids or failure reasons, which the page must not carry).
PARITY_COLUMNS = ("status", "seconds", "energy_true", "energy_pred", "forces_true", "forces_pred", "free")


@dataclass(frozen=True)
class Figure:
    """One figure of a task page; ``kind`` picks the drawing in site.js, which reads the plot data's
    entry of that name (``shift`` the entry of ``axis`` under it)."""

    kind: Literal["energy", "forces", "adwt", "shift"]
    title: str
    unit: str = ""  # of both axes of a parity plot
    axis: str | None = None  # shift: which axis
    xlabel: str | None = None  # shift: what the axis score measures

    @property
    def id(self) -> str:
        return f"plot-{self.kind}" + (f"-{self.axis}" if self.axis else "")


ENERGY_PARITY = Figure("energy", "Energy parity", unit="eV")
FORCES_PARITY = Figure("forces", "Force components parity (free atoms)", unit="eV/Å")


def sample(n: int, limit: int = MAX_POINTS) -> np.ndarray:
    """At most ``limit`` of ``n`` indices: a fixed random subsample, in order."""
    return np.arange(n) if n <= limit else np.sort(np.random.default_rng(0).choice(n, limit, replace=False))


def rounded(values) -> list:
    """Floats to 6 significant digits: the page carries no more than a plot can show."""
    return [float(f"{x:.6g}") for x in np.asarray(values, dtype=float)]


def ok_rows(table: pa.Table) -> list[dict[str, Any]]:
    return [r for r in table.to_pylist() if r.get("status") == "ok"]


def parity_plots(table: pa.Table) -> dict[str, Any]:
    """Mean seconds per structure and the number of ok rows, with energy and force-component parity
    (free atoms) when the table has those columns."""
    ok = ok_rows(table)
    secs = [r["seconds"] for r in ok if r.get("seconds") is not None]
    out: dict[str, Any] = {"seconds": float(np.mean(secs)) if secs else None, "n_ok": len(ok)}
    if ok and "energy_true" in ok[0]:
        idx = sample(len(ok))
        out["energy"] = {"x": rounded([ok[i]["energy_true"] for i in idx]),
                         "y": rounded([ok[i]["energy_pred"] for i in idx])}
    if ok and "forces_true" in ok[0]:
        ft = [np.reshape(r["forces_true"], (-1, 3))[np.asarray(r["free"], bool)].ravel() for r in ok]
        fp = [np.reshape(r["forces_pred"], (-1, 3))[np.asarray(r["free"], bool)].ravel() for r in ok]
        ft, fp = np.concatenate(ft), np.concatenate(fp)
        idx = sample(ft.size)
        out["forces"] = {"x": rounded(ft[idx]), "y": rounded(fp[idx])}
    return out
