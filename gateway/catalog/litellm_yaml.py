"""Reading a LiteLLM config.yaml as YAML: mappings and lists that remember the line each key and item is on
(so every problem can name its line), duplicate keys refused, dates kept as text."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NoReturn

import yaml

from gateway.catalog.litellm_keys import ConfigError, got, where


class LineDict(dict):  # type: ignore[type-arg]
    """A YAML mapping that remembers the 1-based line it starts on and the line of each key."""

    def __init__(self, line: int | None = None) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[str, int] = {}


class LineList(list):  # type: ignore[type-arg]
    """A YAML sequence that remembers the 1-based line it and each of its items start on."""

    def __init__(self, line: int | None = None) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


class _Loader(yaml.SafeLoader):
    """SafeLoader that records line numbers, rejects duplicate and non-string keys, and keeps dates as text."""


MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Iterator[LineDict]:
    data = LineDict(node.start_mark.line + 1)
    yield data  # yielding first lets anchors/aliases refer to this mapping before it is filled
    # Keys pulled in by a "<<: *anchor" merge may be overridden; only keys written here twice are a mistake.
    written_here = {id(key_node) for key_node, _ in node.value if key_node.tag != MERGE_TAG}
    loader.flatten_mapping(node)
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"mapping keys must be strings, got {got(key)}", key_node.start_mark
            )
        if id(key_node) in written_here:
            if key in seen:
                # PyYAML would silently keep the last one; a repeated rpm is almost always an editing slip.
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        data[key] = loader.construct_object(value_node)
        data.key_lines[key] = key_node.start_mark.line + 1


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> Iterator[LineList]:
    data = LineList(node.start_mark.line + 1)
    yield data
    for item in node.value:
        data.append(loader.construct_object(item))
        data.item_lines.append(item.start_mark.line + 1)


def _construct_as_text(loader: _Loader, node: yaml.ScalarNode) -> str:
    # Dates would become datetime objects, which JSON columns cannot store; LiteLLM treats them as text anyway.
    return str(loader.construct_scalar(node))


def _construct_unsupported(loader: _Loader, node: yaml.Node) -> NoReturn:
    raise yaml.constructor.ConstructorError(None, None, f"unsupported YAML type {node.tag}", node.start_mark)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_as_text)
_Loader.add_constructor("tag:yaml.org,2002:binary", _construct_unsupported)
_Loader.add_constructor("tag:yaml.org,2002:set", _construct_unsupported)


def read_yaml(text: str, source: str = "config.yaml") -> Any:
    """Parse YAML text into LineDict/LineList/scalars; raise ConfigError naming source, line and reason."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as e:
        line, message = _yaml_problem(e)
        raise ConfigError(f"{where(source, line)}: {message}", line) from None
    except yaml.YAMLError as e:  # e.g. a control character the reader refuses
        raise ConfigError(f"{source}: invalid YAML: {e}") from None


def _yaml_problem(error: yaml.MarkedYAMLError) -> tuple[int | None, str]:
    mark = error.problem_mark or error.context_mark
    line = mark.line + 1 if mark else None
    if isinstance(error, yaml.constructor.ConstructorError):
        return line, error.problem or str(error)
    message = f"invalid YAML: {error.problem or error.context}"
    # Scanner errors are often detected lines after their cause (an unclosed quote); point at both.
    if error.problem and error.context and error.context_mark:
        message += f" ({error.context} on line {error.context_mark.line + 1})"
    return line, message


def plain(value: Any) -> Any:
    """Drop the line bookkeeping so values compare and serialise as ordinary dicts and lists."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
