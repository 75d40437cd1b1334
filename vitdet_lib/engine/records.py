"""The JSON-lines log a training writes beside its checkpoints."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..io import write_text_atomic


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_jsonl(path: Path, iteration: int, *, key: str = "iter",
                   types: tuple[str, ...] | None = None) -> None:
    """Drop the records of steps after ``iteration`` (a resumed run redoes those steps).

    Args:
        key: the record's step count.
        types: when given, only records whose ``type`` is one of these are dropped (others,
            e.g. a tokenizer's own training lines, are kept whatever their count).
    """
    if not path.is_file():
        return
    keep = [r for r in read_jsonl(path)
            if (types is not None and r.get("type") not in types) or r.get(key, 0) <= iteration]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))


