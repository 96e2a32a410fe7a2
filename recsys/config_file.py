"""Reads a YAML or TOML config file into a plain mapping (one reader for every config type).

Example::

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.toml"
    >>> _ = p.write_text("lr = 0.1\\n")
    >>> read_config_file(p)
    {'lr': 0.1}
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

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
