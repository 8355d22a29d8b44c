"""Read deploy.yaml into a validated Deployment, with a YAML line for every path, or one clear error per problem."""

from __future__ import annotations

import difflib
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from forge.errors import InputError
from forge.yamlio import SafeLoader
from forge.schema import Deployment

MAX_FILE_BYTES = 1_000_000  # a deploy.yaml is a few KB; anything this large is a mistake (or an attack)
# Bounds on the parsed tree, counted with every alias expanded: a few hundred values is a real deploy.yaml, so these
# only stop a "billion laughs" alias bomb or pathological nesting before they cost minutes or gigabytes.
MAX_NODES = 100_000
MAX_DEPTH = 64


@dataclass
class LineIndex:
    """Maps a dotted path (e.g. ``engine.args.max_num_seqs``) to its 1-based (line, column) in the file."""

    positions: dict[tuple[Any, ...], tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: tuple[Any, ...] | str) -> tuple[int, int]:
        if isinstance(path, str):
            path = tuple(int(p) if p.isdigit() else p for p in path.split(".")) if path else ()
        # Fall back to the nearest ancestor that the file does contain (a missing key points at its parent).
        while path and path not in self.positions:
            path = path[:-1]
        return self.positions.get(path, (1, 1))


@dataclass
class LoadedDeployment:
    path: Path
    deployment: Deployment
    lines: LineIndex
    raw: dict[str, Any]


def _index(root: yaml.Node, out: dict[tuple[Any, ...], tuple[int, int]], where: str) -> None:
    """Record the line of every path. Iterative and bounded (aliases expanded), so that an alias bomb, a
    self-referencing anchor or 10,000 nested brackets is refused in milliseconds instead of hanging."""
    stack: list[tuple[yaml.Node, tuple[Any, ...]]] = [(root, ())]
    visited = 0
    while stack:
        node, path = stack.pop()
        visited += 1
        line, col = node.start_mark.line + 1, node.start_mark.column + 1
        if visited > MAX_NODES:
            raise InputError(f"{where}:{line}:{col}: YAML expands to more than {MAX_NODES:,} values (aliases "
                             "repeated inside aliases?) — write the values out; a deploy.yaml has a few hundred")
        if len(path) > MAX_DEPTH:
            raise InputError(f"{where}:{line}:{col}: YAML nested more than {MAX_DEPTH} levels deep (or an anchor "
                             "that contains itself) — a deploy.yaml is a few levels deep")
        out.setdefault(path, (line, col))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in reversed(node.value):
                # A complex key (`? [a, b]`) gets a placeholder; constructing the data reports it properly.
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else f"<{key_node.tag}>"
                out[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                stack.append((value_node, path + (key,)))
        elif isinstance(node, yaml.SequenceNode):
            for i in range(len(node.value) - 1, -1, -1):
                stack.append((node.value[i], path + (i,)))


class _UniqueKeyLoader(SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(
                None, None, "a list or mapping used as a key — keys must be plain names", key_node.start_mark
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (the first one would be silently ignored) — keep only one",
                key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_text(path: Path) -> str:
    where = str(path)
    if not path.exists():
        raise InputError(f"{where}: no such file — check the path")
    if path.is_dir():
        raise InputError(f"{where}: is a directory — pass a deploy.yaml file (or use a directory to grade a fleet)")
    if not path.is_file():  # a device or a pipe would read forever (/dev/zero) or block (a FIFO)
        raise InputError(f"{where}: not a regular file — pass a deploy.yaml file")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{where}: file is empty — start from one of readiness/examples/*.yaml")
    if size > MAX_FILE_BYTES:
        raise InputError(
            f"{where}: file is {size / 1e6:.1f} MB, over the {MAX_FILE_BYTES // 1_000_000} MB limit for a deploy.yaml — "
            "is this the right file?"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{where}: cannot read the file: {exc.strerror} — check its permissions") from None
    if not data.strip():
        raise InputError(f"{where}: file has only whitespace — start from one of readiness/examples/*.yaml")
    if b"\x00" in data:
        line, col = _line_col(data, data.index(b"\x00"))
        raise InputError(f"{where}:{line}:{col}: binary data (a NUL byte) — expected a YAML text file; is this the "
                         "right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _line_col(data, exc.start)
        raise InputError(f"{where}:{line}:{col}: byte 0x{data[exc.start]:02x} is not UTF-8 text — save the file "
                         "as UTF-8") from None


def _line_col(data: bytes, offset: int) -> tuple[int, int]:
    line_start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, offset - line_start + 1


def parse_yaml(text: str, where: str) -> tuple[Any, LineIndex]:
    try:
        # Parse once: the node tree gives line numbers, constructing from it gives the data.
        # The tree is indexed (and bounded) before it is constructed, so an alias bomb is never expanded.
        index = LineIndex()
        loader = _UniqueKeyLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _index(node, index.positions, where)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        raise InputError(_yaml_syntax_message(exc, where)) from None
    except yaml.YAMLError as exc:
        raise InputError(f"{where}: malformed YAML: {' '.join(str(exc).split())} — fix the syntax") from None
    except RecursionError:
        raise InputError(f"{where}: YAML nested too deeply — a deploy.yaml is a few levels deep") from None
    return data, index


def _yaml_syntax_message(exc: yaml.MarkedYAMLError, where: str) -> str:
    problem = " ".join((exc.problem or exc.context or "invalid YAML").split())
    mark, ctx = exc.problem_mark or exc.context_mark, exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    opened = {"while parsing a flow mapping": "{", "while parsing a flow sequence": "["}.get(exc.context or "")
    if opened and ctx is not None:
        # The fix belongs where the bracket was opened, not where the parser gave up.
        close = "}" if opened == "{" else "]"
        return (f"{where}:{ctx.line + 1}:{ctx.column + 1}: malformed YAML: '{opened}' opened here is not closed "
                f"({problem} at line {line}) — add the missing '{close}' or ','")
    if "tab character" in problem:
        return f"{where}:{line}:{col}: malformed YAML: a tab is used for indentation — indent with spaces"
    if "duplicate key" in problem or "used as a key" in problem:
        return f"{where}:{line}:{col}: malformed YAML: {problem}"
    if "could not determine a constructor" in problem:
        return f"{where}:{line}:{col}: malformed YAML: unsupported tag ({problem.split('tag ')[-1]}) — remove it"
    if "undefined alias" in problem:
        return (f"{where}:{line}:{col}: malformed YAML: alias (*name) without a matching anchor — define &name "
                "before using it")
    if "another document" in problem:
        return f"{where}:{line}:{col}: malformed YAML: a second document ('---') — keep one deployment per file"
    if exc.context and ctx is not None and ctx.line != (mark.line if mark else -1):
        problem = f"{problem} ({exc.context} at line {ctx.line + 1})"
    return f"{where}:{line}:{col}: malformed YAML: {problem} — check the indentation and syntax at this line"


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names the schema allows at the parent of `loc`, for 'did you mean' hints."""
    model: Any = Deployment
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        info = model.model_fields.get(part)
        if info is None:
            return []
        model = _model_in(info.annotation)
        if model is None:
            return []
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


# What each pydantic error type expects, in the words of a deploy.yaml author (no pydantic jargon, no URLs),
# and how to write it.
_WHOLE = ("a whole number", "write digits only, e.g. 8")
_NUMBER = ("a number", "write digits only, e.g. 0.5")
_BOOL = ("true or false", "write true or false")
_TEXT = ("text", "write one value, quoted if it has special characters")
_DATE = ("a date", "write YYYY-MM-DD, e.g. 2027-01-31")
_LIST = ("a list", "write [a, b] or one '- item' line each")
_MAPPING = ("a mapping", "write 'key: value' lines indented under it")
_EXPECTED = {
    "int_type": _WHOLE, "int_parsing": _WHOLE, "int_from_float": _WHOLE,
    "float_type": _NUMBER, "float_parsing": _NUMBER, "decimal_type": _NUMBER,
    "bool_type": _BOOL, "bool_parsing": _BOOL, "string_type": _TEXT, "str_type": _TEXT,
    "date_type": _DATE, "date_parsing": _DATE, "date_from_datetime_parsing": _DATE,
    "date_from_datetime_inexact": _DATE, "datetime_type": _DATE, "datetime_parsing": _DATE,
    "list_type": _LIST, "tuple_type": _LIST, "set_type": _LIST,
    "dict_type": _MAPPING, "model_type": _MAPPING, "model_attributes_type": _MAPPING,
}
_BOUNDS = {"greater_than": ("gt", "greater than"), "greater_than_equal": ("ge", "at least"),
           "less_than": ("lt", "less than"), "less_than_equal": ("le", "at most")}
# A typical value, for the fields where "out of range" alone does not say what to write.
_TYPICAL = {"availability": "0.999", "gpu_memory_utilization": "0.90", "window_days": "30",
            "prefix_cache_hit_rate": "0.3", "expected_acceptance_rate": "0.7"}
# Pydantic marks the branch of a union it tried in the error path; those are not keys of the file.
_BRANCH_TAGS = {"bool", "str", "int", "float", "date", "datetime", "list", "dict", "none", "is-instance", "literal"}


def _shown(value: Any) -> str:
    """The user's value as they wrote it in YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = repr(value.isoformat() if hasattr(value, "isoformat") else value)
    return text if len(text) <= 60 else text[:57] + "...'"


def _describe(err: dict[str, Any]) -> str:
    loc = err["loc"]
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    name = str(loc[-1]) if loc else ""
    if kind == "extra_forbidden":
        allowed = _fields_at(loc)
        close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"remove it (allowed here: {', '.join(allowed) or 'none'})"
        return f"unknown key '{name}' — {hint}"
    if kind == "missing":
        parent = f"under {'.'.join(str(p) for p in loc[:-1])}" if len(loc) > 1 else "at the top level"
        return f"required key '{name}' is missing — add it {parent} (see readiness/examples/)"
    if kind in ("literal_error", "enum"):
        allowed = str(ctx.get("expected") or "").replace(" or ", ", ")
        note = " (YAML reads yes/no/on/off as true/false: quote the word)" if isinstance(value, bool) else ""
        choice = f"one of {allowed}" if "," in allowed else allowed
        return f"{_shown(value)} is not allowed{note} — use {choice}"
    if kind in _EXPECTED:
        wanted, fix = _EXPECTED[kind]
        return f"expected {wanted}, got {repr(value) if kind == 'int_from_float' else _shown(value)} — {fix}"
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        limit = ctx.get(key)
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        typical = f", e.g. {_TYPICAL[name]}" if name in _TYPICAL else ""
        return f"{_shown(value)} is out of range — must be {words} {limit}{typical}"
    if kind == "string_too_short":
        return "must not be empty — write a value" if ctx.get("min_length") == 1 else \
            f"too short — at least {ctx.get('min_length')} characters"
    if kind == "string_too_long":
        return f"too long — at most {ctx.get('max_length')} characters"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s) — add them"
    if kind == "too_long":
        return f"has too many items — at most {ctx.get('max_length')}"
    if kind == "string_pattern_mismatch":
        return f"{_shown(value)} does not have the expected form ({ctx.get('pattern')}) — see `forge readiness schema`"
    if kind == "forge_located":
        return str(ctx.get("message") or err["msg"])
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if kind in ("value_error", "assertion_error"):
        return msg
    # Anything not translated above: pydantic's sentence, de-jargoned, with the value the user wrote.
    msg = msg.replace("Input should be", "must be").replace("input should be", "must be")
    return f"{_shown(value)}: {msg[:1].lower() + msg[1:]}"


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # Drop pydantic's union-branch markers such as 'ProgressWatchdog', 'bool' or 'function-after[...]'.
    return tuple(p for p in loc if isinstance(p, int) or (p[:1].islower() or p in ("apiVersion",))
                 and "[" not in p and p not in _BRANCH_TAGS)


def _located(err: dict[str, Any], loc: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Errors the schema raised with a place of their own (`forge_located`): the key at fault, not its section."""
    ctx = err.get("ctx") or {}
    if err["type"] != "forge_located":
        return [(loc, err)]
    out = []
    for at, message in [(ctx.get("at"), ctx.get("message")), *(ctx.get("also") or [])]:
        sub = tuple(int(p) if p.isdigit() else p for p in str(at).split(".")) if at else ()
        out.append((loc + sub, {**err, "loc": loc + sub, "ctx": {"message": message}}))
    return out


def validate(data: Any, index: LineIndex, where: str) -> Deployment:
    if not isinstance(data, dict):
        got = "an empty document" if data is None else f"{_shown(data)}" if not isinstance(data, (list, tuple)) \
            else "a list"
        raise InputError(
            f"{where}:1:1: expected a mapping that starts with 'apiVersion: forge/v1' and 'kind: InferenceDeployment', "
            f"got {got} — start from one of readiness/examples/*.yaml"
        )
    if data.get("apiVersion") not in (None, "forge/v1"):
        line, col = index.locate(("apiVersion",))
        raise InputError(f"{where}:{line}:{col}: apiVersion: {_shown(data.get('apiVersion'))} is not supported — "
                         "use 'forge/v1'")
    try:
        return Deployment.model_validate(data)
    except ValidationError as exc:
        # Unions report one error per branch at the same place: merge them into one line.
        by_place: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for err in exc.errors(include_url=False):
            for loc, e in _located(err, _clean_loc(tuple(err["loc"]))):
                by_place.setdefault(loc, []).append({**e, "loc": loc})
        problems: list[str] = []
        for loc, errs in by_place.items():
            line, col = index.locate(loc)
            dotted = ".".join(str(p) for p in loc) or "(top level)"
            expected = [_EXPECTED[e["type"]] for e in errs if e["type"] in _EXPECTED]
            if len(errs) > 1 and len(expected) == len(errs):
                wanted = " or ".join(dict.fromkeys(w for w, _ in expected))
                fixes = " or ".join(dict.fromkeys(f.removeprefix("write ") for _, f in expected))
                text = f"expected {wanted}, got {_shown(errs[0].get('input'))} — write {fixes}"
            else:
                text = _describe(errs[0])
            problems.append(f"{where}:{line}:{col}: {dotted}: {' '.join(text.split())}")
        raise InputError(problems) from None


def load(path: str | Path) -> LoadedDeployment:
    p = Path(path)
    text = read_text(p)
    data, index = parse_yaml(text, str(p))
    deployment = validate(data, index, str(p))
    return LoadedDeployment(path=p, deployment=deployment, lines=index, raw=data)
