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


def truncate_jsonl(path: Path, iteration: int) -> None:
    """Drop the records of steps after ``iteration`` (a resumed run redoes those steps)."""
    if not path.is_file():
        return
    text = "".join(json.dumps(r) + "\n" for r in read_jsonl(path) if r["iter"] <= iteration)
    write_text_atomic(path, text)


