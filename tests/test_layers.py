"""The code keeps its shape (architecture rule 10): layers import downwards only, no import cycles, no private
names across modules, imports inside functions only for optional heavy dependencies, and no function over 60
lines without a stated reason. These read the source; nothing is imported."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Lowest first, by package: a module may import modules of its own layer or below. The folders are the layers
# (architecture rule 10): base (the backend seam, argument checks, units, YAML errors, this machine's memory), model
# (the kernel's state, variants, plans, oracles, and the result every engine returns), inputs and engines, analysis
# (invariants, cost model) with the API, jobs (sweeps, host measurement, benchmarks, plots), the command line.
LAYERS = (
    ("kernels", ("gpusim.kernels",)),
    ("base", ("gpusim.base",)),
    ("model", ("gpusim.model",)),
    ("inputs and engines", ("gpusim.inputs", "gpusim.engines")),
    ("analysis and API", ("gpusim.analysis", "gpusim.api", "gpusim.stream")),
    ("jobs", ("gpusim.jobs",)),
    ("interfaces", ("gpusim.cli", "gpusim")),
)
# Imported inside functions, so that they load only when used: the CUDA side (rule 7), matplotlib, Ray; and, for
# start-up (issue 28: a one-table `gpusim fork` runs on the reference and loads no compiled code), the modules that
# load numba (the compiled passes of scan and the digest, the fast engine, the region generator), pyarrow (snapshot
# files), and the write phase's and episode's engines, which a fork without them does not need.
HEAVY_OPTIONAL = ("cupy", "numba.cuda", "gpusim.kernels.cuda", "matplotlib", "ray")
START_UP_DEFERRED = (
    *("numba", "gpusim.kernels.scan", "gpusim.kernels.lanes", "gpusim.engines.fast", "gpusim.engines.lazyfast"),
    "gpusim.inputs.regions",
    *("pyarrow", "gpusim.engines.writes", "gpusim.engines.episode"),
)
# Modules whose functions may import anything: the package facade (the module ``gpusim`` itself) and the command
# line (``gpusim.cli`` and below) load what a call or a command needs when it runs, and the backend seam loads the
# engine asked for, so that `import gpusim`, `gpusim --help` and `gpusim variants` do not load numba.
LAZY_LOADERS = ("gpusim", "gpusim.cli", "gpusim.base.backend")
LAZY_PACKAGES = ("gpusim.cli",)
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, pathlib.Path]:
    out = {}
    for base, pkg in (("gpusim", "gpusim"), ("kernels", "gpusim.kernels")):
        for p in sorted((ROOT / base).rglob("*.py")):
            parts = [x for x in p.relative_to(ROOT / base).with_suffix("").parts if x != "__init__"]
            out[".".join([pkg, *parts])] = p
    return out


MODULES = modules()


def layer_of(mod: str) -> int:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for pre in prefixes:
            if (mod == pre or mod.startswith(pre + ".")) and (best is None or len(pre) > best[1]):
                best = (i, len(pre))
    assert best is not None, f"{mod} is in no layer: add it to LAYERS"
    return best[0]


def imports(mod: str):
    """(node, imported module, imported name or None, inside a function) of every import of ``mod``."""
    path = MODULES[mod]
    tree = ast.parse(path.read_text())
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node, a.name, None, id(node) in in_function
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                yield node, (full if full in MODULES else base), a.name, id(node) in in_function


def package_target(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def edges() -> dict[str, set[str]]:
    out = {m: set() for m in MODULES}
    for m in MODULES:
        for _, target, _, _ in imports(m):
            t = package_target(target)
            if t and t != m:
                out[m].add(t)
    return out


def test_every_module_has_a_layer():
    for m in MODULES:
        layer_of(m)


def test_imports_point_downwards():
    bad = []
    for m in MODULES:
        for node, target, _, _ in imports(m):
            t = package_target(target)
            if t and t != m and layer_of(t) > layer_of(m):
                bad.append(
                    f"{MODULES[m].relative_to(ROOT)}:{node.lineno}: {m} ({LAYERS[layer_of(m)][0]}) imports "
                    f"{t} ({LAYERS[layer_of(t)][0]})"
                )
    assert not bad, "\n".join(bad)


def test_kernels_import_no_package_module():
    bad = [
        f"{m} imports {package_target(t)}"
        for m in MODULES
        if m.startswith("gpusim.kernels")
        for _, t, _, _ in imports(m)
        if package_target(t) and not package_target(t).startswith("gpusim.kernels")
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = edges()
    # a package's __init__ that re-exports its modules is not a cycle with them
    for m in graph:
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_no_private_names_across_modules():
    bad = []
    for m in MODULES:
        for node, target, name, _ in imports(m):
            t = package_target(target)
            if t and t != m and name and name.startswith("_") and not name.startswith("__"):
                bad.append(f"{MODULES[m].relative_to(ROOT)}:{node.lineno}: {name} of {t}")
    assert not bad, "\n".join(bad)


def test_imports_inside_functions_only_for_heavy_optional_dependencies():
    bad = []
    allowed = HEAVY_OPTIONAL + START_UP_DEFERRED
    for m in MODULES:
        if m in LAZY_LOADERS or any(m.startswith(x + ".") for x in LAZY_PACKAGES):
            continue
        for node, target, name, inside in imports(m):
            full = f"{target}.{name}" if name else target
            if inside and not any(full == h or full.startswith(h + ".") for h in allowed):
                bad.append(f"{MODULES[m].relative_to(ROOT)}:{node.lineno}: {full}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("folder", ["gpusim", "kernels", "benchmarks"])
def test_functions_are_short_or_say_why(folder):
    """A function over 60 lines states its reason in a ``# long:`` comment."""
    bad = []
    for p in sorted((ROOT / folder).rglob("*.py")):
        text = p.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                body = lines[node.lineno - 1 : node.end_lineno]
                if n > MAX_FUNCTION_LINES and not any("# long:" in line for line in body):
                    bad.append(f"{p.relative_to(ROOT)}:{node.lineno}: {node.name} is {n} lines")
    assert not bad, "\n".join(bad)
