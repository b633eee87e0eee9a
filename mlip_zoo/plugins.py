"""The one registry: plugins of a kind (model families, tasks) found through an entry-point group,
so a third-party package can add one without touching mlip-zoo. Listing them imports nothing;
``load`` imports the one asked for."""

from __future__ import annotations

import difflib
import functools
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from mlip_zoo.errors import MlipZooError


class Plugins:
    def __init__(self, group: str, kind: str, error: type[MlipZooError]):
        self.group, self.kind, self.error = group, kind, error

    @functools.cached_property
    def _found(self) -> dict[str, EntryPoint]:  # scanning every installed distribution takes ~20-70 ms
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def all(self) -> dict[str, EntryPoint]:
        return dict(self._found)

    def get(self, name: str) -> EntryPoint:
        """The entry point of ``name``, or an error naming the close matches and every known one."""
        if name not in self._found:
            hint = difflib.get_close_matches(name, list(self._found), n=1)
            raise self.error(f"unknown {self.kind} {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                             + f"; known: {', '.join(sorted(self._found))} (entry points {self.group})")
        return self._found[name]

    def load(self, name: str) -> Any:
        return self.get(name).load()
