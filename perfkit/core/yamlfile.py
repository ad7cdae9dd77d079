"""Reading a YAML parameter file safely: a clear ``ConfigError`` naming the file for anything that is not a
reasonable parameter file, before any work starts, and never an echo of a hostile input.

Refused: a missing, binary, non-UTF-8 or oversized file, invalid YAML, a key given twice in one mapping
(plain YAML keeps the last silently), nesting deeper than :data:`MAX_DEPTH`, and aliases that expand to more
than :data:`MAX_VALUES` values (a "billion laughs" file is a few hundred bytes). Accepted: merge keys
(``<<: *defaults``), and ``-`` for standard input.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from perfkit.core.errors import ConfigError

MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_VALUES = 200_000
STDIN = "-"
_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader with a depth limit while composing and duplicate keys refused while constructing."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: D102 - PyYAML's hook
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _TooDeep(Exception):
    def __init__(self, mark):
        super().__init__()
        self.mark = mark


def _mapping_unique(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE:  # `<<: *base`: its keys may be overridden here, by design
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            dup = key in seen
        except TypeError:  # an unhashable key: construct_mapping says so
            break
        if dup:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {str(key)[:60]!r} (each key may "
                                                    "appear once)", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_unique)


def _expanded_values(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values the document holds once every alias is expanded (memoized: linear in the nodes)."""
    k = id(node)
    if k in memo:
        return memo[k]
    memo[k] = 1  # a cycle counts once (SafeLoader can't build recursive objects anyway)
    if isinstance(node, yaml.SequenceNode):
        n = 1 + sum(_expanded_values(c, memo) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        n = 1 + sum(_expanded_values(a, memo) + _expanded_values(b, memo) for a, b in node.value)
    else:
        n = 1
    memo[k] = min(n, 10 * MAX_VALUES)  # saturate: the count only needs to say "too many"
    return memo[k]


def source_name(path: str | Path) -> str:
    return "<stdin>" if str(path) == STDIN else str(path)


def read_text(path: str | Path) -> str:
    """The file's text (``-``: standard input); ConfigError if it is missing, not a text file or too large."""
    if str(path) == STDIN:
        data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ConfigError(f"<stdin>: more than {MAX_FILE_BYTES} bytes is too large for a parameter file")
        where = "<stdin>"
    else:
        path = Path(path)
        where = str(path)
        if not path.exists():
            raise ConfigError(f"{path}: no such parameter file")
        if path.is_dir():
            raise ConfigError(f"{path}: is a directory, not a parameter file (give a .yaml file, e.g. "
                              "params/demo.yaml)")
        if is_pipe(path):  # `perfkit run <(envsubst < p.yaml)`: read once, bounded, like standard input
            try:
                with open(path, "rb") as f:
                    data = f.read(MAX_FILE_BYTES + 1)
            except OSError as e:
                raise ConfigError(f"{path}: cannot read the parameter file: {e.strerror}") from None
            if len(data) > MAX_FILE_BYTES:
                raise ConfigError(f"{path}: more than {MAX_FILE_BYTES} bytes is too large for a parameter file")
            return _decode(data, where)
        if not path.is_file():
            raise ConfigError(f"{path}: not a regular file; give a YAML parameter file")
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ConfigError(f"{path}: {path.stat().st_size} bytes is too large for a parameter file "
                                  f"(at most {MAX_FILE_BYTES} bytes of YAML)")
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the parameter file: {e.strerror}") from None
    return _decode(data, where)


def is_pipe(path: str | Path) -> bool:
    """A named pipe or a character device (``/dev/fd/63`` from a shell's process substitution)."""
    import stat

    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _decode(data: bytes, where: str) -> str:
    if b"\0" in data:
        raise ConfigError(f"{where}: a binary file, not a YAML parameter file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not UTF-8 text (byte {e.start}): a parameter file is YAML text") from None


def parse(text: str, where: str) -> Any:
    """The data of a YAML text; ConfigError (naming ``where``, never echoing the input) if it is not a
    reasonable parameter file."""
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except _TooDeep as e:
            raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep (line {e.mark.line + 1}): "
                              "not a parameter file") from None
        except RecursionError:
            raise ConfigError(f"{where}: nested too deeply: not a parameter file") from None
        if node is None:
            return None
        if _expanded_values(node, {}) > MAX_VALUES:
            raise ConfigError(f"{where}: its aliases expand to more than {MAX_VALUES} values: refused (a parameter "
                              "file is far smaller; this is how 'billion laughs' files exhaust memory)")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where_in = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"{where}: not valid YAML: {str(what)[:200]}{where_in}") from None
    finally:
        loader.dispose()


def line_of(text: str, loc: tuple) -> int | None:
    """The line (1-based) of the key or item at ``loc`` (a path of keys and indexes) in a YAML text that
    :func:`parse` accepted; the deepest line found where the path goes beyond the text, None without one."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            hit = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
            if hit is None:
                return line
            line, node = hit[0].start_mark.line + 1, hit[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def read_yaml(path: str | Path) -> Any:
    """The parsed YAML of a parameter file (``-``: standard input); ConfigError for anything else."""
    return parse(read_text(path), source_name(path))
