"""The YAML of a sweep, validated by pydantic v2 (unknown keys are errors), and its expansion into points.

A sweep file holds ``name``, ``description``, ``seed``, ``repeat``, ``backend``, ``profile``, ``check``,
``workload`` (a generator: ``kind`` and its keys, :data:`Workload`), ``fork`` (``variant``, ``oracle``, ``inject``,
``chain``, ``generations``, ``writes``: a write phase after the fork) and ``sweep`` with ``grid`` (the Cartesian
product of lists) and ``zip`` (lists taken in step) over dotted keys such as ``workload.size`` or ``fork.variant``.
Every point is validated as a whole config, so a bad value in a list is reported with the key it sets. Sizes accept
units (``64GiB``).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from gpusim.base.backend import BACKENDS
from gpusim.base.units import parse_size
from gpusim.base.yamlerr import (
    ConfigError,
    describe_validation_error,
    error_lines,
    error_location,
    error_message,
    lines_of,
    node_line,
    parse_yaml,
)
from gpusim.inputs.catalogue import SCENARIOS
from gpusim.inputs.snapshot import parse_range
from gpusim.model.frames import parse_frame_order
from gpusim.model.oracle import InjectionPlan, LockBreakOracle
from gpusim.model.variants import DEFAULT_VARIANT, VARIANTS


def _size(v):
    if isinstance(v, bool):
        raise ValueError("a size is a number of bytes or a string such as 64GiB")
    if isinstance(v, (int, float)):
        return int(v)
    if isinstance(v, str):
        return parse_size(v)
    raise ValueError("a size is a number of bytes or a string such as 64GiB")


MAX_SIZE = (1 << 31) * 4096  # the model's page and folio numbers are int32 (kernels/fields.py): 8 TiB of pages


def _page_size(v):
    n = _size(v)
    if n < 4096:
        raise ValueError(f"size {n} is less than one 4 KiB page")
    if n > MAX_SIZE:
        raise ValueError(f"size {n} is more than 8TiB (2**31 pages: the model numbers pages with int32)")
    return n


def one_of(value: str, known, what: str) -> str:
    """``value`` if it is one of ``known``, else the error that lists them."""
    if value not in known:
        raise ValueError(f"unknown {what} '{value}' (known: {', '.join(known)})")
    return value


Size = Annotated[int, BeforeValidator(_page_size)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
# Unknown keys are errors. The validators are built when a model is first used, not at import: `gpusim fork` maps
# its flags onto the workload models only (start-up).
_STRICT = ConfigDict(extra="forbid", defer_build=True)


class Region(BaseModel):
    """One mapping (or ``vmas`` equal mappings, each starting at a 2 MiB boundary) of the address space."""

    model_config = _STRICT
    size: Size = Field(description="bytes of the region (units: KiB, MiB, GiB, TiB)")
    backing: Literal["anon", "file", "shmem"] = "anon"
    shared: bool = Field(False, description="MAP_SHARED (shared anon memory is shmem)")
    flags: list[Literal["dontcopy", "wipeonfork", "ro"]] = []
    fill: Fraction = Field(1.0, description="fraction of the PTE slots mapped (sparse tables below 1)")
    folio_order: int = Field(0, ge=0, le=9, description="PTE-mapped folios of 2**order pages (anon)")
    thp_fraction: Fraction = Field(0.0, description="fraction of whole 2 MiB extents mapped by a huge PMD (anon)")
    pinned_fraction: Fraction = Field(0.0, description="fraction of the mapped pages pinned (FOLL_PIN), whole folios")
    pinned_placement: Literal["scattered", "contiguous"] = "scattered"
    pinned_regions: int = Field(1, ge=1, description="contiguous placement: number of pinned runs")
    swap_fraction: Fraction = Field(0.0, description="fraction of the mapped folios swapped out")
    swap_count_max: int = Field(
        1, ge=1, le=1 << 24, description="swap counts drawn uniformly in 1..max (above 62: continuations)"
    )
    vmas: int = Field(1, ge=1, le=1 << 20, description="split into this many equal VMAs")
    frame_order: str = Field(
        "address",
        description="physical order of the frames: address (as first populated), random, or runs:K "
        "(runs of K folios), shuffled within each page table",
    )

    @field_validator("frame_order")
    @classmethod
    def _frame_order(cls, v):
        parse_frame_order(v)
        return v


class AnonWorkload(Region):
    """Private anonymous memory (a heap): ``kind: anon`` and the keys of :class:`Region`."""

    kind: Literal["anon"]
    has_pinned: bool | None = Field(None, description="MMF_HAS_PINNED (default: whether any page is pinned)")


class MixedWorkload(BaseModel):
    """Several regions, in address order: ``kind: mixed``, ``regions: [...]``."""

    model_config = _STRICT
    kind: Literal["mixed"]
    regions: list[Region] = Field(min_length=1)
    has_pinned: bool | None = None


class LayoutWorkload(BaseModel):
    """The spec's layout notation: ``kind: layout``, ``layout: "normal*100 pinned normal*411"``."""

    model_config = _STRICT
    kind: Literal["layout"]
    layout: str


class ScenarioWorkload(BaseModel):
    """A scenario of the catalogue (its layout, and its oracle and injections unless ``fork`` sets them)."""

    model_config = _STRICT
    kind: Literal["scenario"]
    scenario: str

    @field_validator("scenario")
    @classmethod
    def _known(cls, v):
        return one_of(v, SCENARIOS, "scenario")


class SnapshotWorkload(BaseModel):
    """A process captured by ``gpusim capture``: ``kind: snapshot``, ``path``, and ``pinned`` address ranges
    (``START-END``, since /proc does not show pins)."""

    model_config = _STRICT
    kind: Literal["snapshot"]
    path: str
    pinned: list[str] = []

    @field_validator("pinned")
    @classmethod
    def _ranges(cls, v):
        for r in v:
            parse_range(r)
        return v


Workload = Annotated[
    Union[AnonWorkload, MixedWorkload, LayoutWorkload, ScenarioWorkload, SnapshotWorkload], Field(discriminator="kind")
]


WORKLOAD_KINDS = ("anon", "mixed", "layout", "scenario", "snapshot")


def workload_spec(kind, params: dict, what: str):
    """A :data:`Workload` from its kind and keys (``gpusim fork --workload``, :func:`gpusim.workload`); a
    ValueError naming ``what``, the key and the problem, one line per problem."""
    if not isinstance(kind, str) or kind not in WORKLOAD_KINDS:
        raise ValueError(f"{what}: kind is one of {', '.join(WORKLOAD_KINDS)}, not {kind!r}")
    try:
        return TypeAdapter(Workload).validate_python({"kind": kind, **params})
    except ValidationError as e:
        raise ValueError(error_lines(e, what)) from None


class GeneratedWrites(BaseModel):
    """A write phase drawn by the seed (spec 11): fractions of the pages each process maps after the fork, who writes
    first (``interleaved``: page by page, the parent before the child), and whether the child exits after writing."""

    model_config = _STRICT
    parent: float = Field(0.0, ge=0, le=1, description="fraction of the parent's mapped pages it writes")
    child: float = Field(0.0, ge=0, le=1, description="fraction of the child's mapped pages it writes")
    order: Literal["parent_first", "child_first", "interleaved"] = "parent_first"
    child_exits: bool = False

    @model_validator(mode="after")
    def _not_empty(self):
        if self.parent == 0 and self.child == 0 and not self.child_exits:
            raise ValueError("an empty write phase: parent and child write no page (leave fork.writes out for none)")
        return self


def _writes_form(v) -> str | None:
    """The form of a ``fork.writes`` value: ``notation`` (a string) or ``generated`` (a mapping)."""
    if isinstance(v, str):
        return "notation"
    if isinstance(v, (dict, GeneratedWrites)):
        return "generated"
    return None


WritesSpec = Annotated[
    Union[Annotated[str, Tag("notation")], Annotated[GeneratedWrites, Tag("generated")]],
    Discriminator(
        _writes_form,
        custom_error_type="writes_form",
        custom_error_message="the write notation (a string, e.g. 'parent:all; child:all') or a mapping of parent, "
        "child, order, child_exits",
    ),
]


class ForkSpec(BaseModel):
    model_config = _STRICT
    variant: str = DEFAULT_VARIANT
    oracle: str | None = Field(None, description="lock-break oracle (default: never, or the scenario's)")
    inject: list[str] | None = Field(None, description="injections (default: none, or the scenario's)")
    chain: int = Field(1, ge=1, le=4096, description="successive forks of the same parent (a prefork server)")
    generations: int = Field(
        1,
        ge=1,
        le=16,
        description="every child forks in turn, this many levels (a tree; each process forks `chain` times)",
    )

    writes: WritesSpec | None = Field(
        None, description="a write phase after the fork: the notation of spec 11.1, or generated (parent, child, ...)"
    )
    episode: dict[str, Any] | str | None = Field(
        None, description="an episode after the fork (spec 11.6): its keys (duration, rate, pattern, ...) or notation"
    )

    @field_validator("episode")
    @classmethod
    def _episode(cls, v):
        if v is not None:
            from gpusim.engines.episode import parse_episode  # the engines load when a sweep asks for them

            parse_episode(v)
        return v

    @field_validator("writes")
    @classmethod
    def _writes(cls, v):
        if isinstance(v, str):
            from gpusim.engines.writes import parse_writes

            parse_writes(v)
        return v

    @model_validator(mode="after")
    def _one_fork_writes(self):
        if self.writes is not None and (self.chain > 1 or self.generations > 1):
            raise ValueError("writes: a write phase follows one fork (chain 1, generations 1)")
        if self.episode is not None and (self.chain > 1 or self.generations > 1):
            raise ValueError("episode: an episode follows one fork (chain 1, generations 1)")
        if self.episode is not None and self.writes is not None:
            raise ValueError("episode: give writes or an episode, not both (an episode is a write phase over time)")
        return self

    @model_validator(mode="after")
    def _tree_size(self):
        total = sum(self.chain**g for g in range(1, self.generations + 1))
        if total > 4096:
            raise ValueError(
                f"chain {self.chain} over {self.generations} generations makes {total} forks (at most 4096)"
            )
        return self

    @field_validator("variant")
    @classmethod
    def _variant(cls, v):
        return one_of(v, VARIANTS, "variant")

    @field_validator("oracle")
    @classmethod
    def _oracle(cls, v):
        if v is not None:
            LockBreakOracle.parse(v)
        return v

    @field_validator("inject")
    @classmethod
    def _inject(cls, v):
        if v is not None:
            InjectionPlan.parse(v)
        return v


class Axes(BaseModel):
    model_config = _STRICT
    grid: dict[str, list] = {}
    zip: dict[str, list] = {}


class Config(BaseModel):
    """One point of a sweep (the sweep file without ``sweep``)."""

    model_config = _STRICT
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    seed: int = Field(0, ge=0)
    repeat: int = Field(1, ge=1, le=10_000)
    backend: str = "auto"
    profile: str | None = None
    check: bool = True
    workload: Workload
    fork: ForkSpec = Field(default_factory=ForkSpec)

    @field_validator("backend")
    @classmethod
    def _backend(cls, v):
        return one_of(v, BACKENDS, "backend")


class SweepFile(Config):
    sweep: Axes = Field(default_factory=Axes)


class Point(BaseModel):
    """An expanded point: its config, the values the sweep set (``params``) and its hash."""

    model_config = ConfigDict(defer_build=True)
    config: Config
    params: dict[str, Any]
    config_hash: str


# How a point runs, not what it simulates: part of its identity (its rows), not of its draws, so that the same
# sweep on another backend, with another cost profile or without checks forks the same address spaces.
RUN_KEYS = frozenset({"backend", "profile", "check"})


# Keys added to the workload after datasets were written, with the value that means what their absence meant: left
# out of the hashes at that value, so that a sweep written before keeps its identity and its points their rows.
LATER_DEFAULTS = {"frame_order": "address", "episode": None}


def _without_later_defaults(d):
    if isinstance(d, dict):
        return {k: _without_later_defaults(v) for k, v in d.items() if LATER_DEFAULTS.get(k, d) != v}
    if isinstance(d, list):
        return [_without_later_defaults(v) for v in d]
    return d


def config_hash(config: Config, draws: bool = False) -> str:
    """SHA-256 (16 hex digits) of the point's canonical JSON, name and description excluded; with ``draws``, of
    what its random draws depend on (also without :data:`RUN_KEYS`)."""
    d = config.model_dump(mode="json", exclude={"name", "description", "repeat"} | (RUN_KEYS if draws else set()))
    d = _without_later_defaults(d)
    if d["fork"].get("writes") is None:  # points without a write phase keep the hashes they had before it existed
        d["fork"].pop("writes", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# What a sweep may change and stay the same sweep in its results directory: its description, the backend it runs on
# and its number of repetitions (rows are keyed by point, backend included, and repetition, so these add rows).
SWEEP_FREE_KEYS = frozenset({"description", "backend", "repeat"})


def sweep_hash(spec: SweepFile) -> str:
    """SHA-256 (16 hex digits) of a sweep's canonical JSON less :data:`SWEEP_FREE_KEYS`: with its name, what a
    results directory records as the sweep it belongs to."""
    d = _without_later_defaults(spec.model_dump(mode="json", exclude=set(SWEEP_FREE_KEYS)))
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _set(d: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        if not isinstance(d.get(k), dict):
            d[k] = {}
        d = d[k]
    d[keys[-1]] = value


def load_sweep(path: str | Path, text: str | None = None) -> tuple[SweepFile, list[Point]]:
    """Parse, validate and expand a sweep file. Raises :class:`ConfigError` naming file, line and key."""
    data, root = parse_yaml(path, text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: a sweep file is a mapping of keys (name, workload, fork, sweep, ...)")
    try:
        spec = SweepFile.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(path, root, err)) from None
    grid, zipped = spec.sweep.grid, spec.sweep.zip
    _check_axes(path, root, grid, zipped)
    base = {k: v for k, v in data.items() if k != "sweep"}
    zip_rows = [dict(zip(zipped, vals)) for vals in zip(*zipped.values())] if zipped else [{}]
    grid_rows = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())] if grid else [{}]
    points, seen, problems = [], set(), {}
    for g in grid_rows:
        for z in zip_rows:
            params = {**g, **z}
            d = copy.deepcopy(base)
            for k, v in params.items():
                _set(d, k, v)
            try:
                cfg = Config.model_validate(d)
            except ValidationError as err:
                for e in err.errors():  # every bad value of every point, each named once
                    problems.setdefault(_point_problem(path, root, e, params, grid), None)
                continue
            h = config_hash(cfg)
            if h in seen:
                continue
            seen.add(h)
            points.append(Point(config=cfg, params=params, config_hash=h))
    if problems:
        raise ConfigError(lines_of(path, list(problems)))
    return spec, points


def _point_problem(path, root, e: dict, params: dict, grid: dict) -> tuple:
    """(line, key, problem) of one error of a point: the swept key and value that made it, where one did."""
    dotted = ".".join(str(p) for p in error_location(e))
    swept = next((k for k in params if dotted.startswith(k + ".") or dotted == k or k.startswith(dotted + ".")), None)
    where = ("sweep", "grid" if swept in grid else "zip", swept) if swept else error_location(e)
    what = f"{dotted} = {params[swept]!r}" if swept else dotted
    return (node_line(root, where), what, error_message(e))


def _check_axes(path, root, grid: dict, zipped: dict) -> None:
    """ConfigError for swept keys that cannot be: an empty list, a key that is not swept (name, ...), a key in both
    grid and zip, a grid value listed twice, zip lists of different lengths."""
    for section, axes in (("grid", grid), ("zip", zipped)):
        for key, values in axes.items():
            if not values:
                raise ConfigError(
                    f"{path}:{_line(root, ('sweep', section, key))}: sweep.{section}.{key}: an empty list"
                )
            if key.split(".")[0] in ("sweep", "name", "description", "repeat"):
                raise ConfigError(
                    f"{path}:{_line(root, ('sweep', section, key))}: sweep.{section}.{key}: cannot be swept"
                )
    problems = [
        (_line(root, ("sweep", "zip", k)), f"sweep.zip.{k}", "swept in sweep.grid too") for k in zipped if k in grid
    ]
    for key, values in grid.items():  # (a zip list may repeat a value: its rows differ in the other lists)
        seen_values = [json.dumps(v, sort_keys=True, default=str) for v in values]
        for v in sorted({v for v in seen_values if seen_values.count(v) > 1}):
            problems.append((_line(root, ("sweep", "grid", key)), f"sweep.grid.{key}", f"{v} listed twice"))
    if problems:
        raise ConfigError("\n".join(f"{path}:{line}: {key}: {what}" for line, key, what in problems))
    lengths = {len(v) for v in zipped.values()}
    if len(lengths) > 1:
        raise ConfigError(
            f"{path}:{_line(root, ('sweep', 'zip'))}: sweep.zip: lists of different lengths "
            f"({', '.join(f'{k}: {len(v)}' for k, v in zipped.items())})"
        )


def _line(root, loc) -> int | str:
    line = node_line(root, loc)
    return line if line is not None else "?"
