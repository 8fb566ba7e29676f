"""Shared behaviour of the network configs: plain-dict round trips for checkpoint metadata."""
from __future__ import annotations

from dataclasses import asdict, fields


class ConfigMixin:
    """``to_dict`` / ``from_dict`` for a config dataclass; unknown keys are an error."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {', '.join(sorted(unknown))}")
        return cls(**d)
