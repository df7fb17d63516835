"""YAML files validated by pydantic models, with errors that name the file, the line and the key.

:func:`load_yaml_model` parses a file, validates it against a model and raises :class:`ConfigError` (one line,
``FILE:LINE: key.path: what is wrong``) for a YAML syntax error, a key the model does not know, a missing key or a
value of the wrong type or unit. The line comes from the YAML node the error's location points to.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A user's configuration file is wrong; the message is meant to be printed as it is."""


def _walk(node, loc) -> tuple[int | None, list]:
    """(1-based line, the parts of ``loc`` found) of the node at ``loc`` (keys and indices) under ``node``: the
    key's line for a mapping entry. Parts that name no key (the tag pydantic puts in the location of a
    discriminated union, a missing key) are skipped."""
    line = node.start_mark.line + 1 if node is not None else None
    found = []
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if str(k.value) == str(part):
                    line, node = k.start_mark.line + 1, v
                    found.append(part)
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
            found.append(part)
    return line, found


def node_line(node, loc) -> int | None:
    """The 1-based line of the YAML node at ``loc`` under ``node`` (None where the file has no such node)."""
    return _walk(node, loc)[0]


def parse_yaml(path: str | Path, text: str | None = None):
    """(data, root node) of a YAML file; :class:`ConfigError` for unreadable or malformed files."""
    path = Path(path)
    try:
        text = path.read_text() if text is None else text
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (UTF-8) file") from None
    try:
        data, root = load_with_nodes(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        what = getattr(e, "problem", None) or str(e)
        ctx = getattr(e, "context", None)
        raise ConfigError(f"{where}: YAML syntax: {what}" + (f" ({ctx})" if ctx else "")) from None
    problems = node_problems(root)
    if problems:
        raise ConfigError(lines_of(path, problems))
    return data, root


def load_with_nodes(text: str):
    """(data, root node) of a YAML text, parsed once (the node tree gives the lines; the data is built from it),
    with libyaml's parser where PyYAML has it: a calibrated profile parses in ~0.03 s there, ~0.3 s in Python."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        root = loader.get_single_node()
        return (None if root is None else loader.construct_document(root)), root
    finally:
        loader.dispose()


NON_FINITE = {".inf", "+.inf", "-.inf", ".nan"}


def node_problems(node, loc: tuple = ()) -> list[tuple[int, str, str]]:
    """(line, key path, problem) for what YAML accepts and gpusim does not: a key given twice in a mapping (YAML
    keeps the last silently) and a number that is not finite."""
    out = []
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for k, v in node.value:
            key = str(k.value)
            if key in seen:
                out.append((k.start_mark.line + 1, ".".join(map(str, loc + (key,))), "key given twice"))
            seen.add(key)
            out += node_problems(v, loc + (key,))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out += node_problems(v, loc + (i,))
    elif isinstance(node, yaml.ScalarNode) and node.tag.endswith(":float") and node.value.lower() in NON_FINITE:
        out.append((node.start_mark.line + 1, ".".join(map(str, loc)) or "(top level)", "not a finite number"))
    return out


MAX_PROBLEMS = 20  # problems listed per file; the rest are counted


def lines_of(path, problems: list[tuple]) -> str:
    """``FILE:LINE: key: problem``, one line each, up to :data:`MAX_PROBLEMS`."""
    lines = [
        f"{path}:{line if line is not None else '?'}: {key}: {what}" for line, key, what in problems[:MAX_PROBLEMS]
    ]
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"{path}: and {len(problems) - MAX_PROBLEMS} more problems")
    return "\n".join(lines)


def error_location(e: dict) -> tuple:
    """The location of one pydantic error with the parts that name no key left out: the tags pydantic adds for a
    validator (``function-after[...]``) and for a member of a discriminated union (the workload's kind, the form of
    ``fork.writes``)."""
    loc = [p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    tag = lambda i: isinstance(loc[i], str) and loc[i] in UNION_TAGS and (i == 0 or loc[i - 1] in UNIONS)  # noqa: E731
    return tuple(p for i, p in enumerate(loc) if not tag(i))


# The fields whose value is a union of models, and the tags pydantic puts after them in an error's location (the
# workload's kind, the form of a write phase); a union validated alone has its tag first.
UNIONS = frozenset({"workload", "writes"})
UNION_TAGS = frozenset({"anon", "mixed", "layout", "scenario", "snapshot", "notation", "generated"})


def error_message(e: dict) -> str:
    """The message of one pydantic error as gpusim prints it."""
    if e["type"] == "extra_forbidden":
        return "unknown key"
    if e["type"] == "missing":
        return "missing key"
    return e["msg"].removeprefix("Value error, ")


def error_lines(err: ValidationError, what: str) -> str:
    """Every error of ``err`` as ``what: key.path: message``, one line each (inputs that are no file)."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in error_location(e))
        lines.append(f"{what}: {key + ': ' if key else ''}{error_message(e)}")
    return "\n".join(dict.fromkeys(lines))


def describe_validation_error(path, root, err: ValidationError, prefix: tuple = ()) -> str:
    """Every error of a pydantic ValidationError as ``FILE:LINE: key.path: message``, one line each (up to
    :data:`MAX_PROBLEMS`)."""
    problems = []
    for e in err.errors():
        loc = prefix + error_location(e)
        line, found = _walk(root, loc)
        if loc and (not found or found[-1] != loc[-1]):
            found.append(loc[-1])  # a missing key: name it
        key = ".".join(str(p) for p in found) or "(top level)"
        problems.append((line, key, error_message(e)))
    return lines_of(path, list(dict.fromkeys(problems)))


def load_yaml_model(path: str | Path, model: type[BaseModel], text: str | None = None, cache: Path | None = None):
    """``model`` validated from the YAML file ``path`` (or its ``text``); :class:`ConfigError` naming the file, line
    and key of every problem. With a ``cache`` directory, a file that parsed and validated before is read from the
    JSON copy of its data kept there under the hash of its text: a calibrated profile (thousands of YAML nodes,
    its measurements) then loads in a millisecond instead of ~0.05 s (start-up of every command that prices a fork).
    """
    if cache is not None and text is None:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError):
            text = None  # parse_yaml says what is wrong
    kept = (
        None if cache is None or text is None else cache / f"yaml-{hashlib.sha256(text.encode()).hexdigest()[:32]}.json"
    )
    if kept is not None and kept.exists():
        try:
            out = model.model_validate(json.loads(kept.read_text()))
            os.utime(kept)  # used now: the copies kept are the most recently used (prune_copies)
            return out
        except (OSError, ValueError):
            pass  # a damaged copy: parse the file
    data, root = parse_yaml(path, text)
    if data is None:
        raise ConfigError(f"{path}: the file is empty")
    try:
        out = model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(path, root, err)) from None
    if kept is not None:
        keep_json(kept, data)
        prune_copies(kept.parent)
    return out


# JSON copies a cache directory keeps (the most recently used): every edit or recalibration of a profile is a new text.
KEEP_COPIES = 32


def prune_copies(directory: Path, keep: int = KEEP_COPIES) -> None:
    """Remove all but the ``keep`` most recently used JSON copies of :func:`load_yaml_model` from ``directory``
    (nothing when it cannot be read or written)."""
    try:
        copies = sorted(directory.glob("yaml-*.json"), key=lambda f: f.stat().st_mtime, reverse=True)
        for f in copies[keep:]:
            f.unlink(missing_ok=True)
    except OSError:
        pass


def keep_json(path: Path, data) -> None:
    """Write ``data`` as JSON to ``path`` (atomically) when JSON gives it back unchanged; nothing when it cannot be
    written."""
    try:
        text = json.dumps(data)
        if json.loads(text) != data:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    except (TypeError, ValueError, OSError):
        pass
