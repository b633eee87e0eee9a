"""``python -m mlip_zoo.cli``: the same as the ``mlipzoo`` script."""

from mlip_zoo.cli import app

app()
