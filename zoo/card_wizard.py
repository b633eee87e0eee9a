"""The questions ``mlipzoo submit`` asks to scaffold a model card, turned into a card dict.

The caller supplies ``ask`` (the CLI: typer prompts; a test: scripted answers) and ``tell`` for
the messages between questions; validation is the card schema's (``card.read_card``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol, get_args

from mlip_zoo.zoo.card import KEY_PATTERN, EnergyTarget
from mlip_zoo.zoo.registry import families


class Ask(Protocol):
    def __call__(self, question: str, default: str | None = None, show_default: bool = True) -> str:
        """The answer to ``question``; ``default`` when the user just presses enter."""


def ask_card(ask: Ask, tell: Callable[[str], None]) -> dict[str, Any]:
    """Ask for a card's fields, in the order a contributor knows them; returns the card as a dict."""
    key = ask("Card key (lower-case, digits, '-' or '.')")
    while not re.match(KEY_PATTERN, key):
        key = ask(f"{key!r} is not a valid key; try e.g. my-model-1.0")
    card: dict[str, Any] = {"key": key, "name": ask("Display name"), "version": ask("Model version")}
    card["family"] = _choose(ask, tell, "Family", sorted(families()))
    card["license"] = ask("License of the weights (SPDX id if there is one)")
    card["targets"] = _choose(ask, tell, "Targets", ["E", "EF", "EFS", "EFSM"], default="EFS")
    # what the OC20 tasks compare its energy with: adsorption energies only for OC20 S2EF-trained models
    card["energy_target"] = _choose(ask, tell, "Energy target: total, or OC20's adsorption energy for a model "
                                    "trained on OC20 S2EF labels", list(get_args(EnergyTarget)), default="total")
    for field_name, question in (("repo", "Code repository URL"), ("paper", "Paper URL"), ("doi", "DOI URL")):
        answer = ask(f"{question} (blank to skip)", default="", show_default=False)
        if answer:
            card[field_name] = answer
    sets = ask("Training sets, comma-separated (blank to skip)", default="", show_default=False)
    if sets:
        card["training_sets"] = [s.strip() for s in sets.split(",") if s.strip()]
    if card["family"] == "ase":
        card["calculator"] = ask("ASE calculator as module:Class")
    source = _choose(ask, tell, "Weights from", ["hub", "url", "package", "none"], default="hub")
    if source != "none":
        card["weights"] = [_ask_weights(ask, source)]
    return card


def _ask_weights(ask: Ask, source: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"filename": ask("File name (relative path)")}
    if source == "hub":
        entry["hf_repo"] = ask("Hugging Face repo (org/name)")
        entry["revision"] = ask("Revision (a commit sha pins it; a branch is pinned on first fetch)", default="main")
    sha = ask("sha256 of the file (blank if unknown: only allowed for Hub files)", default="", show_default=False)
    if sha:
        entry["sha256"] = sha
    if source == "url":
        entry["mirrors"] = [{"url": ask("URL")}]
    elif source == "package":
        entry["mirrors"] = [{"package": ask("Python package that ships it"), "path": ask("Path inside the package")}]
    return entry


def _choose(ask: Ask, tell: Callable[[str], None], question: str, choices: list[str],
            default: str | None = None) -> str:
    while True:
        answer = ask(f"{question} ({', '.join(choices)})", default)
        if answer in choices:
            return answer
        tell(f"{answer!r} is not one of: {', '.join(choices)}")
