"""Config files: one reader (YAML or TOML) and one loader into a frozen dataclass, for every config type.

:func:`read_config_file` gives the file's mapping; :func:`config_from_dict`
builds a dataclass from it with the checks every config shares: unknown keys
named with the known ones, nested dataclass fields as sections, values of
the declared type (ints widen to floats, lists become tuples).
:func:`check_positive` is the range check the dataclasses' ``__post_init__``
share.

Example::

    >>> import tempfile, pathlib
    >>> from dataclasses import dataclass
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.toml"
    >>> _ = p.write_text("lr = 1\\n")
    >>> read_config_file(p)
    {'lr': 1}
    >>> @dataclass(frozen=True)
    ... class Opt:
    ...     lr: float = 0.1
    ...     hidden: tuple[int, ...] = (8,)
    >>> config_from_dict(Opt, read_config_file(p), source=str(p))
    Opt(lr=1.0, hidden=(8,))
    >>> config_from_dict(Opt, {"lr": 0.1, "hiden": [4]}, source="c.toml", section="opt")
    Traceback (most recent call last):
        ...
    ValueError: c.toml: unknown key(s) ['hiden'] in section 'opt'; known keys: ['lr', 'hidden']
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a ``.yaml``/``.yml`` or ``.toml`` file ({} when empty).

    Raises:
        ValueError: another suffix, or a file that does not parse (naming it).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise ValueError(f"{path}: unknown config format {suffix!r}; expected .yaml, .yml or .toml")
    text = path.read_text()
    try:
        raw = tomllib.loads(text) if suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: not valid {suffix[1:].upper()} ({e})") from e
    return {} if raw is None else raw


T = TypeVar("T")


def config_from_dict(cls: type[T], raw: Any, source: str = "<dict>", section: str | None = None) -> T:
    """Build the frozen dataclass ``cls`` from a plain mapping (as read from YAML/TOML).

    Missing keys keep their defaults. A field whose type is a dataclass is a
    nested section (a mapping of its keys). Values are checked against the
    field annotations after the dataclass's own checks (``__post_init__``)
    ran: ints widen to floats, lists become tuples, and any other mismatch
    names the key.

    Args:
        cls (type[T]): the dataclass.
        raw (Any): the mapping.
        source (str): where ``raw`` came from (a file), named by every error.
        section (str | None): the section ``raw`` is, named by errors (None: the top level).

    Returns:
        T: the configuration.

    Raises:
        ValueError: ``raw`` is not a mapping, has unknown keys or a bad value.
    """
    where = f" in section {section!r}" if section else ""
    if not isinstance(raw, dict):
        what = f"section {section!r} must be a mapping" if section else f"expected a mapping of {cls.__name__} keys"
        raise ValueError(f"{source}: {what}, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}{where}; known keys: {known}")
    values = {}
    for key, value in raw.items():
        if dataclasses.is_dataclass(hints[key]):
            values[key] = config_from_dict(hints[key], value, source, section=key)
        else:
            values[key] = _coerce(value, hints[key])
    try:
        config = cls(**values)
    except TypeError as e:  # a comparison in __post_init__ with a value of the wrong type: name its key
        _check_types(values, hints, source, section)
        raise ValueError(f"{source}: {e}") from e
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e
    _check_types(values, hints, source, section)
    return config


def _allowed(hint: Any) -> tuple[Any, ...]:
    """The types a field annotation admits (``X | None`` -> ``(X, NoneType)``)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def _coerce(value: Any, hint: Any) -> Any:
    """An int where a float is expected becomes a float, a list where a tuple is expected a tuple."""
    allowed = _allowed(hint)
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, list) and any(typing.get_origin(t) is tuple for t in allowed):
        return tuple(value)
    return value


def _check_types(values: dict[str, Any], hints: dict[str, Any], source: str, section: str | None) -> None:
    """Every value has its field's declared type (bool is not an int; tuple items are checked too)."""
    for key, value in values.items():
        allowed = _allowed(hints[key])
        if not any(_is_instance(value, t) for t in allowed):
            names = " or ".join("null" if t is type(None) else getattr(t, "__name__", str(t)) for t in allowed)
            raise ValueError(f"{source}: {section + '.' if section else ''}{key} must be {names}, got {value!r}")


def _is_instance(value: Any, t: Any) -> bool:
    if t is type(None):
        return value is None
    if typing.get_origin(t) is tuple:
        item = typing.get_args(t)[0]
        return isinstance(value, tuple) and all(_is_instance(v, item) for v in value)
    if dataclasses.is_dataclass(t):
        return isinstance(value, t)
    if t in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, t)


def check_positive(config: object, names: Iterable[str], *, zero: bool = False, integer: bool = True,
                   optional: bool = False) -> None:
    """The range check the config dataclasses share: each named field is a positive int (or number).

    Args:
        config (object): the dataclass instance (its class names the field in the message).
        names (Iterable[str]): the fields.
        zero (bool): 0 is allowed too.
        integer (bool): ints only; False: any int or float.
        optional (bool): None is allowed too.

    Raises:
        ValueError: ``TypeName.field must be a positive int, got X`` (or ``an int >= 0``,
            ``a positive number``, ``... or None``).

    Example::

        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class C:
        ...     n: int = 0
        >>> check_positive(C(), ["n"], zero=True)
        >>> check_positive(C(), ["n"])
        Traceback (most recent call last):
            ...
        ValueError: C.n must be a positive int, got 0
    """
    kind = int if integer else (int, float)
    what = ("an int >= 0" if zero else "a positive int") if integer else ("a number >= 0" if zero else "a positive number")
    for name in names:
        value = getattr(config, name)
        if optional and value is None:
            continue
        if not isinstance(value, kind) or isinstance(value, bool) or not (value >= 0 if zero else value > 0):
            raise ValueError(f"{type(config).__name__}.{name} must be {what}{' or None' if optional else ''}, got {value!r}")
