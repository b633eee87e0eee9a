"""The card wizard behind `mlipzoo submit`, driven by scripted answers instead of a terminal."""

from __future__ import annotations

import yaml

from mlip_zoo.zoo.card import read_card
from mlip_zoo.zoo.card_wizard import ask_card


def scripted(answers: list[str]):
    """An ``ask`` that answers in order, and like a prompt takes the default for a blank answer."""
    asked: list[str] = []

    def ask(question: str, default: str | None = None, show_default: bool = True) -> str:
        asked.append(question)
        answer = answers.pop(0)
        return default if answer == "" and default is not None else answer

    return ask, asked


def test_wizard_asks_again_for_a_bad_key_or_choice_and_builds_a_valid_card(tmp_path):
    ask, asked = scripted(["My LJ", "my-lj", "LJ argon", "1", "lj", "ase", "MIT", "", "", "", "", "", "Ar-only, ",
                           "ase.calculators.lj:LennardJones", "none"])
    told: list[str] = []
    card = ask_card(ask, told.append)
    assert asked[1] == "'My LJ' is not a valid key; try e.g. my-model-1.0"
    assert told == [f"'lj' is not one of: {asked[4].split('(')[1].rstrip(')')}"]
    assert card == {"key": "my-lj", "name": "LJ argon", "version": "1", "family": "ase", "license": "MIT",
                    "targets": "EFS", "energy_target": "total", "training_sets": ["Ar-only"],
                    "calculator": "ase.calculators.lj:LennardJones"}
    path = tmp_path / "my-lj.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    assert read_card(path).key == "my-lj"


def test_wizard_records_a_hub_file_with_its_revision_and_sha256():
    sha = "ab" * 32
    ask, _ = scripted(["hub-model", "Hub model", "2", "chgnet", "MIT", "EF", "", "https://example.org/code", "", "",
                       "", "", "model.pt", "org/hub-model", "", sha])
    card = ask_card(ask, lambda message: None)
    assert card["repo"] == "https://example.org/code" and card["targets"] == "EF"
    assert card["weights"] == [{"filename": "model.pt", "hf_repo": "org/hub-model", "revision": "main", "sha256": sha}]
