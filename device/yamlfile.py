"""Reading YAML config files a user wrote, with the surprises of YAML taken out.

``load_yaml`` accepts one YAML document (UTF-8 text) and differs from ``yaml.safe_load`` in:

- only ``true``/``false`` (any case) are booleans, as in YAML 1.2: ``off``, ``on``, ``yes``,
  ``no``, ``y`` and ``n`` stay strings (``console: {format: off}`` means the string "off";
  boolean fields still accept them, pydantic reads "off"/"no" as false);
- integers are decimal, ``0x`` hex or ``0o`` octal; ``1:30`` is a string (YAML 1.1 read it
  as 90, base 60) and ``010`` is 10;
- a key given twice in one mapping is an error naming both lines (YAML keeps the last);
- non-finite numbers (``.inf``, ``.nan``, ``1e999``) are an error naming the key path and line;
- anchors and aliases are expanded only when the whole document stays under ``MAX_NODES``
  nodes ("billion laughs" is refused before anything is expanded); an alias that refers to
  itself is refused;
- a syntax error names the line and column and shows that line with secrets masked
  (``password:``/``token:``/``secret:`` values, ``user:password@`` in URLs).
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from device.errors import EdgecamError

MAX_NODES = 10_000  # a device config has a few hundred; a billion-laughs file, billions

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and integers (see the module docstring)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _INT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    _INT,
    re.compile(r"^(?:[-+]?[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$"),
    list("-+0123456789"),
)


def _construct_int(loader: _Loader, node: ScalarNode) -> int:
    value = loader.construct_scalar(node).replace("_", "")
    if value.startswith("0o"):
        return int(value[2:], 8)
    if value.startswith("0x"):
        return int(value[2:], 16)
    return int(value, 10)


_Loader.add_constructor(_INT, _construct_int)

_SECRET_KEY = re.compile(
    r"""^(\s*-?\s*["']?[\w.-]*(?:password|passwd|secret|token|api_?key)["']?\s*:\s*).*$""",
    re.IGNORECASE,
)
_URL_CREDENTIALS = re.compile(r"(//[^/\s:@]*:)[^/\s@]*@")


def redact(line: str) -> str:
    """A config line with the value of a secret key and URL passwords replaced by ``***``."""
    line = _SECRET_KEY.sub(lambda m: m.group(1) + "***", line)
    return _URL_CREDENTIALS.sub(lambda m: m.group(1) + "***@", line)


def load_yaml(
    text: str, source: str, error: type[EdgecamError] = EdgecamError
) -> tuple[Any, Node | None]:
    """Parse one YAML document; return the data and its node tree (for line numbers).

    ``error`` is the exception raised for every problem (message names ``source`` and a line).
    """
    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None, None
        _Inspector(source, error).size(node, ())
        return loader.construct_document(node), node
    except yaml.MarkedYAMLError as exc:
        raise error(_syntax_message(exc, text, source), _SYNTAX_FIX) from None
    except yaml.reader.ReaderError as exc:
        raise error(
            f"{source}: character #x{exc.character:04x} at position {exc.position} is not "
            "allowed in YAML",
            "a config file is plain UTF-8 text; check the path, or remove control characters",
        ) from None
    except yaml.YAMLError as exc:
        raise error(f"{source} is not valid YAML: {type(exc).__name__}", _SYNTAX_FIX) from None
    except RecursionError:
        raise error(f"{source} is nested too deeply to be a config file") from None
    finally:
        if loader is not None:
            loader.dispose()


_SYNTAX_FIX = "check indentation and quoting on that line (quote values that contain ': ' or '#')"


def _syntax_message(exc: yaml.MarkedYAMLError, text: str, source: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    what = exc.problem or exc.context or "syntax error"
    if exc.context and exc.problem:
        what = f"{exc.problem} ({exc.context})"
    if mark is None:
        return f"{source} is not valid YAML: {what}"
    lines = text.splitlines()
    excerpt = ""
    if 0 <= mark.line < len(lines):
        excerpt = f": {redact(lines[mark.line]).strip()[:120]}"
    return (
        f"{source} is not valid YAML: line {mark.line + 1}, column {mark.column + 1}: "
        f"{what}{excerpt}"
    )


class _Inspector:
    """One walk over the composed node graph, before anything is constructed."""

    def __init__(self, source: str, error: type[EdgecamError]):
        self.source = source
        self.error = error
        self.sizes: dict[int, int] = {}
        self.open: set[int] = set()
        self.total = 0

    def size(self, node: Node, path: tuple[Any, ...]) -> int:
        """The number of nodes ``node`` expands to (aliases counted at every use)."""
        key = id(node)
        if key in self.open:
            raise self.error(
                f"{self.source}, line {node.start_mark.line + 1}: {_dotted(path)}: an alias "
                "refers to the node that contains it",
                "remove the alias (*name) or point it at another anchor",
            )
        if key in self.sizes:
            size = self.sizes[key]
        else:
            self.open.add(key)
            size = 1 + sum(self.size(child, sub) for sub, child in self._children(node, path))
            self.open.discard(key)
            self.sizes[key] = size
            self._check_scalar(node, path)
        self.total += 1
        if size > MAX_NODES or self.total > MAX_NODES:
            raise self.error(
                f"{self.source}: the document expands to more than {MAX_NODES:,} values "
                f"(at line {node.start_mark.line + 1}); anchors and aliases (&name / *name) "
                "that repeat each other are refused before they are expanded",
                "write the values out, or use fewer nested aliases",
            )
        return size

    def _children(self, node: Node, path: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], Node]]:
        if isinstance(node, SequenceNode):
            return [((*path, i), child) for i, child in enumerate(node.value)]
        if not isinstance(node, MappingNode):
            return []
        seen: dict[tuple[str, str], int] = {}
        out = []
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.tag != _MERGE:
                ident = (key.tag, key.value)
                line = key.start_mark.line + 1
                if ident in seen:
                    raise self.error(
                        f"{self.source}, line {line}: {_dotted((*path, key.value))}: duplicate "
                        f"key {key.value!r} (first given on line {seen[ident]})",
                        "give each key once: YAML would silently keep only the last value",
                    )
                seen[ident] = line
            name = key.value if isinstance(key, ScalarNode) else "?"
            out += [((*path, name), key), ((*path, name), value)]
        return out

    def _check_scalar(self, node: Node, path: tuple[Any, ...]) -> None:
        if not (isinstance(node, ScalarNode) and node.tag == _FLOAT):
            return
        text = node.value.replace("_", "").lower()
        try:
            finite = math.isfinite(float(text.replace(".inf", "inf").replace(".nan", "nan")))
        except ValueError:  # sexagesimal and other YAML 1.1 forms: left to the constructor
            return
        if not finite:
            raise self.error(
                f"{self.source}, line {node.start_mark.line + 1}: {_dotted(path)}: {node.value} "
                "is not a finite number",
                "write a finite number (or quote it if you meant text)",
            )


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path) or "(top level)"
