"""Declared settings: each setting is one dataclass field carrying its help, choices and
checks, and every surface is read off those fields: the command-line flags, the recipe
section, the keyword API and the ModelOpt mode's config.

A value is converted and checked the same way wherever it comes from (a flag's text, a YAML
value, a Python value), so a bad one gets the same one-line ``name: problem`` error on every
surface; recipes put the key's path in front.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import MinitronError

S = TypeVar("S", bound="Schema")


@dataclass(frozen=True)
class Setting:
    """What a field needs for every surface.

    ``unset`` says what leaving an optional setting out (None) means; ``convert`` turns a
    value of a non-scalar type (from text or a mapping) into that type; ``check`` returns a
    problem with an accepted value or None; ``show`` writes the default as a flag's text;
    ``modelopt`` says why the ModelOpt mode does not take the setting (empty: it does)."""

    help: str
    unset: str = ""
    choices: tuple[str, ...] = ()
    convert: Callable[[Any], Any] | None = None
    check: Callable[[Any], str | None] | None = None
    show: Callable[[Any], str] = str
    modelopt: str = ""


def setting(default: Any, help: str, **options: Any) -> Any:
    """A dataclass field with its :class:`Setting` (``options`` are Setting's)."""
    return dataclasses.field(default=default, metadata={"setting": Setting(help, **options)})


def at_least(low: int) -> Callable[[Any], str | None]:
    return lambda value: None if value >= low else f"must be at least {low}"


def positive(value: Any) -> str | None:
    return None if value > 0 else "must be positive"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must not be negative"


def in_unit_interval(value: Any) -> str | None:
    return None if 0 <= value <= 1 else "must be in [0, 1]"


def below_one(value: Any) -> str | None:
    """A fraction that leaves something: in [0, 1)."""
    return None if 0 <= value < 1 else "must be in [0, 1)"


@dataclass(frozen=True)
class Field:
    """One declared setting: its name, Python type (without None), default and Setting."""

    name: str
    kind: Any
    optional: bool
    default: Any
    setting: Setting

    def parse(self, value: Any) -> Any:
        """``value`` (text, YAML or Python) as this field's type, checked; MinitronError
        ``name: problem`` otherwise."""
        if value is None:
            if self.optional:
                return None
            raise MinitronError(f"{self.name}: must be given")
        s = self.setting
        try:
            value = s.convert(value) if s.convert else _scalar(self.kind, value)
        except MinitronError as exc:
            raise MinitronError(f"{self.name}: {exc}") from None
        if s.choices and value not in s.choices:
            raise MinitronError(f"{self.name}: {value!r} is not one of {', '.join(s.choices)}")
        problem = s.check(value) if s.check else None
        if problem:
            raise MinitronError(f"{self.name}: {value!r} {problem}")
        return value

    def default_text(self) -> str:
        """The default as a user would write it (or what leaving the setting out means)."""
        return self.setting.unset if self.default is None else self.setting.show(self.default)


_BOOL_TEXT = {"true": True, "yes": True, "on": True, "1": True,
              "false": False, "no": False, "off": False, "0": False}


def _scalar(kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, str) and value.lower() in _BOOL_TEXT:
            return _BOOL_TEXT[value.lower()]
        if not isinstance(value, bool):
            raise MinitronError(f"{value!r} is not true or false")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise MinitronError(f"{value!r} is not a string")
        return value
    what = "an integer" if kind is int else "a number"
    if isinstance(value, str):  # a flag's text, or YAML's 8.0e4 (read as a string)
        try:
            value = float(value)
        except ValueError:
            raise MinitronError(f"{value!r} is not {what}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (kind is int and not float(value).is_integer()):
        raise MinitronError(f"{value!r} is not {what}")
    return int(value) if kind is int else float(value)


class Schema:
    """Base of settings dataclasses whose fields are :func:`setting` s: values are converted
    and checked on construction."""

    def __post_init__(self) -> None:
        for f in fields_of(type(self)):
            setattr(self, f.name, f.parse(getattr(self, f.name)))

    @classmethod
    def from_mapping(cls: type[S], data: Any, where: str = "") -> S:
        """Settings from a mapping (a recipe section, a ModelOpt config); ``where`` is put in
        front of errors (a recipe's key path)."""
        if not isinstance(data, dict):
            raise MinitronError(f"{where}: expected a mapping, got {data!r}")
        unknown = _unknown(cls, data)
        if unknown:
            raise MinitronError(f"{where}: {unknown}" if where else unknown)
        try:
            return cls(**data)
        except MinitronError as exc:
            raise MinitronError(f"{where}.{exc}" if where else str(exc)) from None

    @classmethod
    def make(cls: type[S], *pieces: Schema | None, **values: Any) -> S:
        """Settings from other settings objects whose fields this schema has (later ones
        win), then ``values`` by name; unknown names are refused."""
        names = {f.name for f in fields_of(cls)}
        merged: dict[str, Any] = {}
        for piece in filter(None, pieces):
            own = fields_of(type(piece)) if isinstance(piece, Schema) else ()
            extra = sorted({f.name for f in own} - names)
            if not own or extra:
                why = f": {cls.__name__} has no {', '.join(extra)}" if extra else ""
                raise MinitronError(f"{type(piece).__name__} is not part of {cls.__name__}{why}")
            merged.update({f.name: getattr(piece, f.name) for f in own})
        unknown = _unknown(cls, values)
        if unknown:
            raise MinitronError(unknown)
        return cls(**{**merged, **values})

    def record(self) -> dict[str, Any]:
        """Every setting as plain JSON values (nested settings as mappings)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields_of(type(self))}


def _unknown(cls: type, values: dict) -> str | None:
    """The refusal of names ``cls`` does not declare, or None."""
    names = [f.name for f in fields_of(cls)]
    unknown = sorted(set(values) - set(names))
    return f"unknown key(s) {', '.join(unknown)} (known: {', '.join(names)})" if unknown else None


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


@functools.cache
def fields_of(cls: type) -> tuple[Field, ...]:
    """The declared settings of ``cls`` in field order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        options = typing.get_args(hint) if typing.get_origin(hint) in (
            typing.Union, types.UnionType) else (hint,)
        kinds = [o for o in options if o is not type(None)]
        out.append(Field(f.name, kinds[0], len(kinds) < len(options), f.default,
                         f.metadata["setting"]))
    return tuple(out)


def modelopt_fields(cls: type) -> Iterator[Field]:
    """The settings the ModelOpt mode takes in its config."""
    return (f for f in fields_of(cls) if not f.setting.modelopt)
