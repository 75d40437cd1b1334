"""What a checkpoint load did, key by key: the antidote to loaders that hide missing and
unexpected keys (docs/paper.md, "Known traps")."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import CheckpointError  # noqa: F401  (its historical home; defined with the others)


@dataclass
class ShapeChange:
    """One tensor whose stored shape differs from the model's, and how it was brought over."""

    key: str  # the model's key
    source: str  # the checkpoint key(s) it came from
    stored: list[int]
    loaded: list[int]
    how: str


@dataclass
class LoadReport:
    """Outcome of :func:`vitdet_lib.checkpoint.initialize_backbone`.

    Attributes:
        kind, checkpoint, layout: what was read (layout: the detected checkpoint layout).
        rel_pos_init, abs_pos_init: the positional treatments actually applied.
        loaded: model key -> the checkpoint key(s) its value came from (with any conversion).
        missing: model key -> how it was initialised instead (only keys the treatment or the
            init kind declares new; anything else is an error, not an entry here).
        dropped: checkpoint key -> why it was not used.
        shape_changes: tensors resized (or re-laid out) on the way in.
    """

    kind: str
    checkpoint: str | None
    layout: str
    rel_pos_init: str
    abs_pos_init: str
    loaded: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    shape_changes: list[ShapeChange] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def summary(self, max_keys: int = 8) -> str:
        """A readable multi-line summary; long key lists are grouped by reason and truncated."""
        lines = [
            f"backbone init: kind={self.kind} layout={self.layout} checkpoint={self.checkpoint}",
            f"  position: rel_pos_init={self.rel_pos_init} abs_pos_init={self.abs_pos_init}",
            f"  loaded: {len(self.loaded)} tensors",
        ]
        converted = {k: v for k, v in self.loaded.items() if v != k}
        if converted:
            lines.append(f"  renamed/converted: {len(converted)}, e.g.")
            lines += [f"    {k} <- {_clip(v)}" for k, v in list(converted.items())[:max_keys]]
        lines.append(f"  missing (initialised here): {len(self.missing)}")
        lines += _grouped(self.missing, max_keys)
        lines.append(f"  dropped from checkpoint: {len(self.dropped)}")
        lines += _grouped(self.dropped, max_keys)
        lines.append(f"  shape changes: {len(self.shape_changes)}")
        for c in self.shape_changes:
            lines.append(f"    {c.key} <- {_clip(c.source)}: {c.stored} -> {c.loaded} ({c.how})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _grouped(entries: dict[str, str], max_keys: int) -> list[str]:
    """Lines ``reason: key, key, ... (+N more)``, one per distinct reason."""
    by_reason: dict[str, list[str]] = {}
    for key, reason in entries.items():
        by_reason.setdefault(reason, []).append(key)
    lines = []
    for reason, keys in by_reason.items():
        shown = ", ".join(keys[:max_keys]) + (f" (+{len(keys) - max_keys} more)"
                                              if len(keys) > max_keys else "")
        lines.append(f"    {reason}: {shown}")
    return lines


def _clip(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 5] + " ...)"
