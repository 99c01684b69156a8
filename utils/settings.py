"""Settings declared once: a dataclass field that carries its kind, help, group and resume rule.

From that one declaration come the dataclass's field and default, the command-line flag (and the
flags of its older names), the UPPER-CASE constant a script may set, the check of a value, what
`--resume` does with it, and its key in `config.json`. `utils/config.py` declares the training
settings this way; `utils/objective.py` the weights and options of the loss terms.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from utils.cli import parse_pair
from utils.errors import ConfigError


# --- kinds: what values a setting takes -----------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    """The values a setting takes: how a flag's text is read, which values are valid, their normal form."""

    expected: str                              # said when a value is refused: "a positive integer"
    parse: Callable[[str], Any]                # a flag's text -> a value (ValueError when it is none)
    valid: Callable[[Any], bool]               # is this value (from a flag, a constant or a saved run) one?
    normal: Callable[[Any], Any] = lambda v: v  # the value as stored (3 -> 3.0 for a number, a list -> a tuple)
    choices: tuple[str, ...] = ()
    metavar: Optional[str] = None
    older: Mapping[str, str] = dataclasses.field(default_factory=dict)  # older spellings of choices
    inner: Optional[Kind] = None               # for `optional(kind)`: that kind

    def read(self, value: Any) -> Any:
        """`value` in its normal form (a text read as a flag would be); ValueError when it is not valid."""
        if isinstance(value, str) and self.parse is not str:
            value = self.parse(value)
        value = self.older.get(value, value) if isinstance(value, str) else value
        if not self.valid(value):
            raise ValueError(value)
        return self.normal(value)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _parse_switch(text: str) -> bool:
    words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
    if text.lower() not in words:
        raise ValueError(text)
    return words[text.lower()]


def _parse_size(text: str) -> tuple[int, int]:
    try:
        return parse_pair(text)
    except argparse.ArgumentTypeError as err:
        raise ValueError(text) from err


def _is_size(v: Any) -> bool:
    return isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_int(x) and x > 0 for x in v)


POSITIVE_INT = Kind("a positive integer", int, lambda v: _is_int(v) and v > 0)
NON_NEGATIVE_INT = Kind("an integer >= 0", int, lambda v: _is_int(v) and v >= 0)
INTEGER = Kind("an integer", int, _is_int)
NUMBER = Kind("a finite number", float, _is_number, float)
POSITIVE = Kind("a positive number", float, lambda v: _is_number(v) and v > 0, float)
NON_NEGATIVE = Kind("a number >= 0", float, lambda v: _is_number(v) and v >= 0, float)
WEIGHT = dataclasses.replace(NON_NEGATIVE, expected="a weight >= 0")
UNIT_INTERVAL = Kind("a value in [0, 1)", float, lambda v: _is_number(v) and 0 <= v < 1, float)
SIZE = Kind("two positive integers 'W,H' (e.g. 1024,512)", _parse_size, _is_size, lambda v: tuple(v), metavar="W,H")
TEXT = Kind("text", str, lambda v: isinstance(v, str))
SWITCH = Kind("True or False", _parse_switch, lambda v: isinstance(v, bool))


def choice(*values: str, older: Mapping[str, str] | None = None) -> Kind:
    """One of `values`; `older` maps retired spellings to their current value."""
    return Kind("one of " + ", ".join(values), str, lambda v: v in values, choices=values, older=dict(older or {}))


def optional(kind: Kind) -> Kind:
    """`kind`, or None (given as 'none' on the command line)."""
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "") else kind.parse(text)

    return Kind(f"{kind.expected}, or none", parse, lambda v: v is None or kind.valid(v),
                lambda v: None if v is None else kind.normal(v), kind.choices, kind.metavar, kind.older, inner=kind)


# --- the declaration ------------------------------------------------------------------------------------
GROUPS = ("network", "data", "optimisation", "objective", "distillation", "run")
# What --resume does with a setting: the run's own value (another is refused), the run's saved value unless
# given again, or this invocation's value (where and how fast it runs).
RESUME_RULES = ("own", "may_change", "invocation")


@dataclass(frozen=True)
class Setting:
    """What a settings field declares besides its name, type and default."""

    kind: Kind
    help: str
    group: str
    resume: str = "own"            # one of RESUME_RULES
    distill_only: bool = False     # offered by the distillation script only
    aliases: tuple[str, ...] = ()  # older names: still accepted as flags, constants and saved keys
    constants: tuple[str, ...] = ()  # further UPPER-CASE names (the original code's), e.g. DATA_DIRECTORY
    flag: Optional[str] = None     # the flag, when it is not --name-with-dashes
    path: bool = False             # a file or folder: made absolute when a run starts

    def __post_init__(self) -> None:
        assert self.group in GROUPS and self.resume in RESUME_RULES, self


def setting(default: Any, kind: Kind, help: str, group: str, **declared: Any) -> Any:
    """A dataclass field declaring a setting (see `Setting` for `declared`)."""
    return dataclasses.field(default=default, metadata={"setting": Setting(kind, help, group, **declared)})


@dataclass(frozen=True)
class Declared:
    """A declared setting with its name and default."""

    name: str
    default: Any
    setting: Setting

    @property
    def flag(self) -> str:
        """The setting's command-line flag."""
        return self.setting.flag or _dashed(self.name)

    @property
    def flags(self) -> list[str]:
        """The flag and those of its older names."""
        return [self.flag, *(_dashed(alias) for alias in self.setting.aliases)]

    @property
    def constants(self) -> list[str]:
        """The UPPER-CASE names a script may set it under (the first is its own)."""
        return [self.name.upper(), *(a.upper() for a in self.setting.aliases), *self.setting.constants]


def _dashed(name: str) -> str:
    return "--" + name.replace("_", "-")


def declared(cls: type) -> Iterator[Declared]:
    """The settings declared by the fields of dataclass `cls`, in declaration order."""
    for f in dataclasses.fields(cls):
        if "setting" in f.metadata:
            yield Declared(f.name, f.default, f.metadata["setting"])


def older_names(cls: type) -> dict[str, str]:
    """Every older name of a setting of `cls` -> its name."""
    return {alias: d.name for d in declared(cls) for alias in d.setting.aliases}


# --- constants at the top of a script --------------------------------------------------------------------
def read_constants(cls: type, constants: Mapping[str, Any], retired: Mapping[str, str],
                   offered: Callable[[Declared], bool] = lambda d: True) -> dict[str, Any]:
    """The settings a script's UPPER-CASE constants set, by setting name, each checked as its flag would be.

    An UPPER-CASE name that is no setting `offered` here is a `ConfigError` naming the closest setting, or
    what replaced it when `retired` (the original code's constants with no meaning here) knows the name.
    """
    by_constant = {name: d for d in declared(cls) for name in d.constants}
    values: dict[str, Any] = {}
    for name, value in constants.items():
        if not name.isupper() or name.startswith("_"):
            continue
        where = f"{name} = {value!r}"
        if name in retired:
            raise ConfigError(f"{where}: the original code's {name} has no meaning here; {retired[name]}")
        if name not in by_constant:
            close = difflib.get_close_matches(name, [c for c, d in by_constant.items() if offered(d)], n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "see --help for the settings"
            raise ConfigError(f"{where}: no setting is called {name}; {hint}")
        d = by_constant[name]
        if not offered(d):
            raise ConfigError(f"{where}: this script does not offer {name}")
        try:
            values[d.name] = d.setting.kind.read(value)
        except (ValueError, TypeError):
            raise ConfigError(f"{where}: {name} expects {d.setting.kind.expected}") from None
    return values


# --- flags ----------------------------------------------------------------------------------------------
def add_flags(parser: argparse.ArgumentParser, cls: type, defaults: Any,
              offered: Callable[[Declared], bool] = lambda d: True) -> None:
    """One flag per setting of `cls` that is `offered`, by group, with its default from `defaults`."""
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for d in sorted(declared(cls), key=lambda d: GROUPS.index(d.setting.group)):
        if not offered(d):
            continue
        group, kind, default = groups[d.setting.group], d.setting.kind, getattr(defaults, d.name)
        if kind is SWITCH:
            group.add_argument(*d.flags, dest=d.name, action=argparse.BooleanOptionalAction, default=default,
                               help=d.setting.help)
        else:
            group.add_argument(*d.flags, dest=d.name, type=_flag_reader(kind), default=default, help=d.setting.help,
                               metavar=kind.metavar or (("{" + ",".join(kind.choices) + "}") if kind.choices else None))


def _flag_reader(kind: Kind) -> Callable[[str], Any]:
    def read(text: str) -> Any:
        try:
            return kind.read(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.expected}, got {text!r}") from None

    read.__name__ = kind.expected  # argparse names the type in some messages
    return read


def given_on_command_line(parser: argparse.ArgumentParser, argv: list[str] | None, names: list[str]) -> set[str]:
    """The settings among `names` that `argv` sets (argparse fills in a default only where none is set yet)."""
    unset = object()
    probe = parser.parse_args(argv, namespace=argparse.Namespace(**{name: unset for name in names}))
    return {name for name in names if getattr(probe, name) is not unset}


def absolute_paths(values: dict[str, Any], cls: type) -> dict[str, Any]:
    """`values` with each path setting made absolute (URLs kept), so that a saved run works from anywhere."""
    out = dict(values)
    for d in declared(cls):
        value = out.get(d.name)
        if d.setting.path and value and "://" not in value:
            out[d.name] = os.path.abspath(value)
    return out
