"""The command-line application every command registers with, and its one-line errors for bad input."""

from __future__ import annotations

import types
import typing

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="gpusim: simulate Linux fork() page-table copying (early COW for pinned pages).",
)


err = Console(stderr=True, highlight=False)


def bad_input(msg: str) -> None:
    err.print(f"gpusim: error: {msg}", markup=False, soft_wrap=True)
    raise typer.Exit(2)


# --- start-up: typer's coercion without pydantic where it is the identity ------------------------------------------
# typer (0.2x) coerces every parameter it processes through a pydantic TypeAdapter built on first use, even one left
# unset (its value None) and a string option holding a string: importing pydantic and typer's adapters costs ~0.1 s,
# a third of `gpusim variants`. Where typer's own coercion is the identity (None; a value already of the parameter's
# plain type str, int, float or bool, without bounds or a parser; a tuple of strings for a list of strings, which
# becomes a list) the value is passed on as typer would return it; any other value goes through typer's runtime
# parameter as before. tests/test_cli.py checks, parameter by parameter of every command, that both give the same.
_PLAIN = (str, int, float, bool)


def _unwrap_optional(annotation):
    """``X`` of ``Optional[X]`` (``X | None``), else the annotation itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def plain_coercion(param, value):
    """(True, what typer's coercion returns for ``value``) where that is known without pydantic, else (False,
    None). ``param``: typer's parameter (its ``type_descriptor``, ``multiple``, ``nargs``)."""
    desc = param.type_descriptor
    info = desc.parameter_info
    multi = param.multiple or param.nargs == -1
    if value is None:  # typer returns an unset value unchanged, an unset multiple one as ()
        return True, () if multi else None
    if info.parser is not None or getattr(desc, "file_annotation", None) is not None:
        return False, None
    annotation = _unwrap_optional(desc.annotation)
    if multi:
        item = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None
        if item is str and isinstance(value, tuple) and all(type(v) is str for v in value):
            return True, list(value)
        return False, None
    if annotation not in _PLAIN or type(value) is not annotation:
        return False, None
    lo, hi = getattr(info, "min", None), getattr(info, "max", None)
    if (lo is not None or hi is not None) and annotation is str:
        return False, None
    if (lo is not None and value < lo) or (hi is not None and value > hi):  # typer's error (or its clamp)
        return False, None
    return True, value


class _PlainRuntimeParam:
    """A typer runtime parameter that coerces :func:`plain_coercion`'s values itself and hands every other value
    to typer's own (built then, with pydantic)."""

    def __init__(self, param, build):
        self.param, self.build = param, build

    def coerce(self, value, param, ctx):
        known, out = plain_coercion(param, value)
        return out if known else self.build(param).coerce(value, param=param, ctx=ctx)


def _lazy_typer_coercion() -> bool:
    """Install :class:`_PlainRuntimeParam` in typer's parameters: True where this typer has the shape it was
    written for (``_TyperParameter.get_runtime_param``, ``type_descriptor``), else False and typer is untouched."""
    core = getattr(typer, "core", None)
    cls = getattr(core, "_TyperParameter", None)
    build = getattr(cls, "get_runtime_param", None)
    if build is None or hasattr(build, "typer_own"):
        return build is not None

    def get_runtime_param(self):
        if getattr(self, "_runtime_param", None) is None and hasattr(self, "type_descriptor"):
            return _PlainRuntimeParam(self, build)
        return build(self)

    get_runtime_param.typer_own = build
    cls.get_runtime_param = get_runtime_param
    return True


def typer_runtime_param(param):
    """typer's own runtime parameter of ``param`` (its coercion through pydantic), for comparing with
    :func:`plain_coercion`."""
    method = type(param).get_runtime_param
    return getattr(method, "typer_own", method)(param)


LAZY_COERCION = _lazy_typer_coercion()
