"""One adapter module per model family. Each exposes ``load(card, files, *, device, dtype)``
and imports its framework inside ``load``, so importing mlip_zoo never needs an extra."""
