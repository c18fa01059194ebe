"""Shared behaviour of the project's frozen config dataclasses."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

T = TypeVar("T", bound="DictConfig")


class DictConfig:
    """Mixin for frozen dataclasses: copies with changes, and a strict round trip through plain dicts (JSON)."""

    @classmethod
    def check_fields(cls, names) -> None:
        """Raise ValueError naming the names that are not fields of ``cls``, and the fields there are."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(names) - set(known))
        if unknown:
            names = ", ".join(repr(name) for name in unknown)
            raise ValueError(
                f"unknown {cls.__name__} field{'s' * (len(unknown) > 1)} {names}; fields: {', '.join(known)}"
            )

    def replace(self: T, **changes) -> T:
        self.check_fields(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[T], values: dict) -> T:
        cls.check_fields(values)
        return cls(**values)

    def differences(self: T, other: T, ignore: tuple[str, ...] = ()) -> dict[str, tuple]:
        """The fields where two configs differ, except ``ignore``: {name: (self's value, other's value)}."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (mine[k], theirs[k]) for k in mine if k not in ignore and mine[k] != theirs[k]}
