"""Settings defined once: a dataclass field holds the default and the help; CLI flags derive from it.

:func:`setting` makes a dataclass field that carries its help text (and,
where the flag's name or values differ from the field's, the flag, its
choices and metavar). :func:`add_settings` adds one ``--kebab-case`` flag
per such field to an ``argparse`` parser: type from the annotation, default
and ``(default: X)`` from the field. :func:`settings_from_args` builds the
dataclass back from the parsed flags, optionally over a base value (a config
file's), so a flag given overrides the file and a flag left out keeps it.

Flag types follow the annotation: ``int``, ``float``, ``str``, ``Path``
(``X | None`` as ``X``); ``bool`` is a switch (``--flag``, or
``--flag/--no-flag`` when the default is true); ``tuple[T, ...]`` takes one
or more values.

Example::

    >>> import argparse
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Job:
    ...     batch_size: int = setting(64, "items per batch")
    ...     timeout_s: float = setting(10.0, "deadline, seconds", flag="--timeout")
    ...     quiet: bool = setting(False, "no progress bar")
    >>> parser = argparse.ArgumentParser(prog="job")
    >>> add_settings(parser, Job)
    >>> settings_from_args(Job, parser.parse_args(["--timeout", "2.5"]))
    Job(batch_size=64, timeout_s=2.5, quiet=False)
    >>> [a.help for a in parser._actions if a.dest == "batch_size"]
    ['items per batch (default: 64)']
    >>> parser = argparse.ArgumentParser(prog="job")
    >>> add_settings(parser, Job, only=("batch_size",), override=True)
    >>> settings_from_args(Job, parser.parse_args([]), base=Job(batch_size=8))
    Job(batch_size=8, timeout_s=10.0, quiet=False)
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from typing import Any

HELP = "help"  # metadata keys of a setting's field
FLAG = "flag"
CHOICES = "choices"
METAVAR = "metavar"


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    choices: Sequence[Any] | None = None,
    metavar: str | None = None,
) -> Any:
    """A dataclass field holding its default and its help (and, if they differ from the field's, flag and values).

    Args:
        default (Any): the default; left out, the field (and its flag) is required.
        help (str): what the setting means, as ``--help`` shows it (the default is appended).
        flag (str | None): the option string; None: ``--`` and the field name in kebab-case.
        choices (Sequence[Any] | None): the allowed values, if a closed set.
        metavar (str | None): the value's name in ``--help``.

    Returns:
        Any: a ``dataclasses.field`` (typed ``Any`` so it can be a field's default).
    """
    meta = {HELP: help, FLAG: flag, CHOICES: None if choices is None else tuple(choices), METAVAR: metavar}
    return dataclasses.field(default=default, metadata=meta)


def flag_of(field: dataclasses.Field) -> str:
    """The option string of a setting field: its ``flag``, else ``--field-name``."""
    return field.metadata.get(FLAG) or "--" + field.name.replace("_", "-")


def show(value: Any) -> str:
    """A default as ``--help`` writes it: floats without a trailing ``.0``, tuples space-separated.

    Example::

        >>> show(120.0), show(0.05), show((128, 64)), show("auto")
        ('120', '0.05', '128 64', 'auto')
    """
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, tuple):
        return " ".join(show(v) for v in value)
    return str(value)


def _value_type(hint: Any) -> tuple[Any, bool]:
    """(the type a flag parses, whether it takes a list) of a field annotation; ``X | None`` is ``X``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"a setting's annotation must be one type or that type | None, got {hint}")
        hint = args[0]
    if typing.get_origin(hint) in (tuple, list):
        return typing.get_args(hint)[0], True
    return hint, False


def add_settings(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    only: Sequence[str] | None = None,
    exclude: Collection[str] = (),
    required: Collection[str] = (),
    override: bool = False,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Adds a flag for each setting field of dataclass ``cls`` (fields made without :func:`setting` are skipped).

    Args:
        parser (argparse.ArgumentParser): the (sub)parser.
        cls (type): a dataclass whose fields come from :func:`setting`.
        only (Sequence[str] | None): these fields, in this order; None: every setting field.
        exclude (Collection[str]): fields left out.
        required (Collection[str]): fields whose flag must be given (no default shown).
        override (bool): the flags override a base value (a config file's): a flag left out
            is absent from the parsed namespace, and the help names the default as the base's.
        defaults (Mapping[str, Any] | None): flag defaults that differ from the field's, by
            field name (a command whose default differs from the library's, e.g. a fixed port).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(only) if only is not None else [n for n, f in fields.items() if HELP in f.metadata]
    for name in names:
        f = fields[name]
        if name in exclude:
            continue
        if HELP not in f.metadata:
            raise ValueError(f"{cls.__name__}.{name} is not a setting (declare it with recsys.settings.setting)")
        default = (defaults or {}).get(name, f.default)
        value_type, many = _value_type(hints[name])
        kwargs: dict[str, Any] = {"dest": name, "help": f.metadata[HELP]}
        if value_type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if default is True else "store_true"
        else:
            kwargs["type"] = value_type
            if many:
                kwargs["nargs"] = "+"
        for key in (CHOICES, METAVAR):
            if f.metadata.get(key) is not None:
                kwargs[key] = f.metadata[key]
        if f.metadata.get(FLAG) and value_type is not bool and CHOICES not in kwargs and METAVAR not in kwargs:
            kwargs[METAVAR] = flag_of(f).lstrip("-").replace("-", "_").upper()  # the flag's name, not the field's
        if name in required or default is dataclasses.MISSING:
            kwargs["required"] = True
        elif override:
            kwargs["default"] = argparse.SUPPRESS
            kwargs["help"] += " (default: the config file's" + ("" if default is None else f", else {show(default)}") + ")"
        else:
            kwargs["default"] = default
            if default is not None and default is not False:
                kwargs["help"] += f" (default: {show(default)})"
        parser.add_argument(flag_of(f), **kwargs)


def settings_from_args(cls: type, args: argparse.Namespace, base: Any = None, **values: Any) -> Any:
    """An instance of dataclass ``cls`` from the flags :func:`add_settings` added; lists become tuples.

    Args:
        cls (type): the dataclass.
        args (argparse.Namespace): parsed flags; those named as ``cls``'s setting fields are taken.
        base (Any): a ``cls`` instance whose values the flags replace (flags absent keep them);
            None: ``cls``'s defaults.
        **values (Any): fields set here rather than by a flag (e.g. a path the command resolved).

    Returns:
        Any: the ``cls`` instance.
    """
    given = vars(args)
    flags = {f.name: given[f.name] for f in dataclasses.fields(cls) if HELP in f.metadata and f.name in given}
    flags = {k: tuple(v) if isinstance(v, list) else v for k, v in flags.items()}
    flags.update(values)
    return dataclasses.replace(base, **flags) if base is not None else cls(**flags)

