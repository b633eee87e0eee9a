"""Reading an offline W&B run back, for the tests (wandb ships no Python reader for its .wandb files)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

_BLOCK = 32 * 1024
_HEADER = b":W&B"
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_run_file(path: str | Path) -> list:
    """The ``wandb_internal_pb2.Record`` messages of a ``run-*.wandb`` file.

    Layout: a 7-byte file header (``:W&B``, magic 0xBEE1, version 0), then LevelDB log records
    in 32 KiB blocks, each with a 7-byte header (crc32c, length, type); a message may be split
    over FIRST/MIDDLE/LAST pieces, and a block tail too short for a header is zero padding.
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if not data.startswith(_HEADER):
        raise ValueError(f"{path}: not a W&B run file (no :W&B header)")
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < 7:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            pending = payload
        elif kind == _FIRST:
            pending = payload
            continue
        elif kind == _MIDDLE:
            pending += payload
            continue
        elif kind == _LAST:
            pending += payload
        else:
            raise ValueError(f"{path}: corrupt record type {kind} at byte {pos}")
        message = wandb_internal_pb2.Record()
        message.ParseFromString(pending)
        records.append(message)
        pending = b""
    return records


def offline_summary(path: str | Path) -> dict[str, Any]:
    """The final summary values a run file records, decoded from JSON."""
    summary: dict[str, Any] = {}
    for rec in read_run_file(path):
        if rec.WhichOneof("record_type") == "summary":
            for item in rec.summary.update:
                key = "/".join([*item.nested_key]) if item.nested_key else item.key
                summary[key] = json.loads(item.value_json)
    return summary


def offline_config(path: str | Path) -> dict[str, Any]:
    """The run config a run file records (from its run record and config updates)."""
    config: dict[str, Any] = {}
    for rec in read_run_file(path):
        kind = rec.WhichOneof("record_type")
        items = rec.run.config.update if kind == "run" else rec.config.update if kind == "config" else []
        for item in items:
            config[item.key] = json.loads(item.value_json)
    return config
