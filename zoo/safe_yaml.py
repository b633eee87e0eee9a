"""YAML as a submitted file may use it: the safe subset without aliases (which can expand
exponentially) or duplicate keys (which silently keep the last value), read with a size bound."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mlip_zoo.errors import CardError


class StrictYAMLError(yaml.YAMLError):
    """A file uses YAML the zoo refuses; the message names the line."""


class StrictLoader(yaml.SafeLoader):
    """YAML's safe subset, minus aliases and duplicate keys.

    An alias (``*name``) repeats a node by reference, so a few lines can stand for billions of
    values (the "billion laughs" bomb) that hang whatever walks the card. A repeated key would
    silently keep the last value (``license: MIT`` then ``license: GPL-3.0``)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise StrictYAMLError(
                f"line {event.start_mark.line + 1}: YAML alias *{event.anchor} is not allowed in a model card "
                "(aliases can expand exponentially); write the value out in full")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        self.flatten_mapping(node)
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise StrictYAMLError(f"line {line}: duplicate key {key!r} (first set on line {seen[key]}); "
                                         "keep one of them")
                seen[key] = line
            except TypeError:  # unhashable: the base constructor reports it
                continue
        return super().construct_mapping(node, deep)


def read_bounded_text(path: Path, max_bytes: int, what: str) -> str:
    """The UTF-8 text of ``path``, refused beyond ``max_bytes`` (read bounded even if the size
    changes or lies: a FIFO, /dev/zero); errors name the file and what it should be."""
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise CardError(f"{path}: cannot read {what} ({exc.strerror or exc})") from exc
    if len(raw) > max_bytes:
        raise CardError(f"{path}: a {what} may be at most {max_bytes // 1024} KiB and this file is "
                        "larger; keep long text in the paper or repository it links to")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CardError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); "
                        "save the card as UTF-8") from None
