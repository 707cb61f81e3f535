"""`craft SUB --help`: the subcommand's own keys, one line each with its value after the given
overrides, and the comment its schema dataclass carries; then its config groups and examples."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

_FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+)$")


def field_comments(cls: type) -> dict[str, str]:
    """{field: its trailing `# comment`} read from the dataclass's source."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return {m.group(1): m.group(2).strip() for m in map(_FIELD.match, source.splitlines()) if m}


def _child_schema(schema: Optional[type], key: str) -> Optional[type]:
    if schema is None or not dataclasses.is_dataclass(schema):
        return None
    for f in dataclasses.fields(schema):
        if f.name == key and f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            return type(value) if dataclasses.is_dataclass(value) else None
    return None


def _format(node: DictConfig, key: str) -> str:
    if OmegaConf.is_missing(node, key):
        return "??? (required)"
    value: Any = node._get_node(key)._value()  # unresolved: interpolations show as ${...}
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (ListConfig, list)):
        return "[" + ",".join(str(v) for v in value) + "]"
    if isinstance(value, (DictConfig, dict)) and not len(value):
        return "{}"
    return "null" if value is None else str(value)


def key_lines(node: DictConfig, schema: Optional[type] = None, prefix: str = "") -> list[tuple[str, str]]:
    """(KEY=VALUE, comment) for every leaf of a composed config, depth first."""
    comments = field_comments(schema) if schema else {}
    rows: list[tuple[str, str]] = []
    for key in node.keys():
        child = node._get_node(key)
        nested = isinstance(child, DictConfig) and not OmegaConf.is_missing(node, key) and child._value() is not None
        if nested and len(child):
            rows += key_lines(child, _child_schema(schema, str(key)), f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}={_format(node, str(key))}", comments.get(str(key), "")))
    return rows


def group_options(conf_dir: str, groups: tuple[str, ...]) -> list[str]:
    return [f"  {g}: " + ", ".join(sorted(p.stem for p in (Path(conf_dir) / g).glob("*.yaml"))) for g in groups]


def render_help(
    name: str,
    description: str,
    examples: list[str],
    cfg: DictConfig,
    schema: Optional[type],
    conf_dir: str,
    groups: tuple[str, ...],
) -> str:
    rows = key_lines(cfg, schema)
    width = min(60, max(len(k) for k, _ in rows)) if rows else 0
    keys = [f"  {k:<{width}}  {c}".rstrip() if c else f"  {k}" for k, c in rows]
    parts = [f"craft {name}: {description}", "", "Examples:", *(f"  {e}" for e in examples), ""]
    if groups:
        parts += ["Config groups (GROUP=OPTION):", *group_options(conf_dir, groups), ""]
    parts += [
        "Keys (KEY=VALUE to change; shown with the values this command line gives):",
        *keys,
        "",
        "Errors print one line; add --verbose (or set HYDRA_FULL_ERROR=1) for the traceback.",
    ]
    return "\n".join(parts)
