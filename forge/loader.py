"""Read deploy.yaml into a validated Deployment, with a YAML line for every path, or one clear error per problem."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from forge.errors import InputError
from forge.yamlio import SafeLoader
from forge.schema import Deployment

MAX_FILE_BYTES = 1_000_000  # a deploy.yaml is a few KB; anything this large is a mistake (or an attack)


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


def _index(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], tuple[int, int]]) -> None:
    out.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            _index(value_node, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, path + (i,), out)


class _UniqueKeyLoader(SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (the first one would be silently ignored)", key_node.start_mark
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
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{where}: file is empty — start from `forge readiness init` or readiness/examples/")
    if size > MAX_FILE_BYTES:
        raise InputError(
            f"{where}: file is {size / 1e6:.1f} MB, over the {MAX_FILE_BYTES // 1_000_000} MB limit for a deploy.yaml — "
            "is this the right file?"
        )
    data = path.read_bytes()
    if b"\x00" in data:
        raise InputError(f"{where}: binary data (NUL bytes) — expected a YAML text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{where}: byte {exc.start} is not UTF-8 — save the file as UTF-8 text") from None


def parse_yaml(text: str, where: str) -> tuple[Any, LineIndex]:
    try:
        # Parse once: the node tree gives line numbers, constructing from it gives the data.
        loader = _UniqueKeyLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise InputError(f"{where}:{line}:{col}: malformed YAML: {problem} — fix the syntax at this line") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{where}: malformed YAML: {exc} — fix the syntax") from None
    except RecursionError:
        raise InputError(f"{where}: YAML nested too deeply — a deploy.yaml is a few levels deep") from None
    index = LineIndex()
    if node is not None:
        _index(node, (), index.positions)
    return data, index


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


def _describe(err: dict[str, Any]) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("str", "int", "float", "bool", "date"))))
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        name = loc[-1] if loc else "?"
        close = difflib.get_close_matches(str(name), _fields_at(loc), n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"allowed here: {', '.join(_fields_at(loc)) or 'none'}"
        return f"unknown key '{name}' — {hint}"
    if kind == "missing":
        return "required key is missing — add it (see `forge readiness schema`)"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    shown = repr(value) if isinstance(value, (int, float, str, bool)) and len(repr(value)) < 60 else None
    if kind in ("literal_error", "enum"):
        return f"{shown} is not allowed — {msg[0].lower() + msg[1:]}"
    if shown is not None and kind not in ("value_error",) and not isinstance(value, dict):
        return f"{shown}: {msg[0].lower() + msg[1:]}"
    return msg


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # Drop pydantic's union-branch markers such as 'ProgressWatchdog' or 'function-after[...]'.
    return tuple(p for p in loc if isinstance(p, int) or (p[:1].islower() or p in ("apiVersion",)) and "[" not in p)


def validate(data: Any, index: LineIndex, where: str) -> Deployment:
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise InputError(
            f"{where}:1:1: expected a mapping with apiVersion: forge/v1 and kind: InferenceDeployment, got {kind} — "
            "see readiness/examples/"
        )
    if data.get("apiVersion") not in (None, "forge/v1"):
        line, col = index.locate(("apiVersion",))
        raise InputError(f"{where}:{line}:{col}: apiVersion '{data.get('apiVersion')}' is not supported — use 'forge/v1'")
    try:
        return Deployment.model_validate(data)
    except ValidationError as exc:
        problems: list[str] = []
        seen: set[tuple[Any, ...]] = set()
        for err in exc.errors():
            loc = _clean_loc(tuple(err["loc"]))
            # One message per place: unions report one error per branch, the first is the useful one.
            if loc in seen:
                continue
            seen.add(loc)
            line, col = index.locate(loc)
            dotted = ".".join(str(p) for p in loc) or "(top level)"
            problems.append(f"{where}:{line}:{col}: {dotted}: {_describe({**err, 'loc': loc})}")
        raise InputError(problems) from None


def load(path: str | Path) -> LoadedDeployment:
    p = Path(path)
    text = read_text(p)
    data, index = parse_yaml(text, str(p))
    deployment = validate(data, index, str(p))
    return LoadedDeployment(path=p, deployment=deployment, lines=index, raw=data)
