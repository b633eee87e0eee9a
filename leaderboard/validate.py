"""Pull-request validation of submitted model cards and result files (``mlipzoo validate``).

Cards: the schema, a known family, an allow-listed ASE calculator, and the byte checks of any
copy of the weights already on this machine. Results: ``results.validate_result``, whose metrics
and intervals must recompute from the predictions file, and the consistency of its verification
sidecar when it has one (``verify.check_verification``; a sidecar named alone validates its
result). Imports, executes and unpickles nothing that was submitted; files other than *.yaml /
*.json are never opened.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlip_zoo.errors import CardError, MlipZooError
from mlip_zoo.evaluators.store import is_verification_file, result_files, result_of_verification
from mlip_zoo.leaderboard.results import validate_result
from mlip_zoo.leaderboard.verify import check_verification
from mlip_zoo.zoo.card import read_card
from mlip_zoo.zoo.families.ase_calc import calculator_class
from mlip_zoo.zoo.registry import check_family, checkpoint_globals
from mlip_zoo.zoo.weights import check_local_copies


def submitted_files(paths: Iterable[Path]) -> list[Path]:
    """The files named, with each folder's cards (*.yaml) and result files in their place."""
    files: list[Path] = []
    for p in paths:
        files += sorted(p.glob("*.yaml")) + result_files(p) if p.is_dir() else [p]
    return files


def validate_files(paths: Iterable[Path], cards: Path | None = None,
                   datasets: Iterable[Path] = ()) -> list[dict[str, Any]]:
    """One row per file: ``{"file", "ok": True, "kind": "card", "key"}``, ``{"file", "ok": True,
    "kind": "result", "references", "verification"}`` or ``{"file", "ok": False, "error"}``.

    ``cards``: read each result's model card from ``cards/<model>.yaml`` (a pull request's) rather
    than the installed ones; ``datasets``: extra datasets to re-derive references from."""
    datasets = tuple(datasets)  # read once per result file
    rows = []
    for f in submitted_files(paths):
        try:
            rows.append(_validate_file(f, cards, datasets))
        except MlipZooError as exc:
            rows.append({"file": str(f), "ok": False, "error": str(exc)})
    return rows


def _validate_file(f: Path, cards: Path | None, datasets: tuple[Path, ...]) -> dict[str, Any]:
    if f.suffix.lower() not in (".json", ".yaml", ".yml"):  # never opened: it could be a pickle, or huge
        raise CardError(f"{f}: not a model card (*.yaml) or a result file (*.json); validate checks only "
                        "those (or folders of them), and does not open any other file")
    if not f.is_file():
        raise CardError(f"{f}: no such file (or not a regular file); give a card (*.yaml), a result "
                        "(*.json) or a folder of them")
    if f.suffix == ".json":  # what makes a result what it claims: results.validate_result
        if is_verification_file(f):  # a sidecar is checked with (and as part of) its result
            f = result_of_verification(f)
            if not f.is_file():
                raise CardError(f"{f}: no such result, but its verification sidecar was given; a sidecar sits "
                                "beside the result it verifies")
        checked = validate_result(f, cards=cards, datasets=datasets)
        comparison = checked.comparison
        if not comparison.ok:
            lines = [f"  {k}: claimed {a!r}, recomputed {b!r}" for k, a, b in comparison.differences[:10]]
            raise CardError(f"{f}: metrics or their intervals do not follow from the predictions file:\n"
                            + "\n".join(lines))
        verified = check_verification(f, checked.record)
        return {"file": str(f), "ok": True, "kind": "result", "references": checked.references,
                "verification": verified.summary if verified is not None else "recomputed only (no verification)"}
    card = read_card(f)
    try:
        check_family(card.family)
    except MlipZooError as exc:
        raise CardError(f"{f}: family: {exc}") from None
    if card.calculator:  # the checks `eval` makes, importing only allow-listed modules
        calculator_class(card, import_trusted=False)
    problems = check_local_copies(card, allow=checkpoint_globals(card.family))
    if problems:
        raise CardError(f"{f}: " + "; ".join(problems))
    return {"file": str(f), "ok": True, "kind": "card", "key": card.key}
