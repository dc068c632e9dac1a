"""The layers of docs/architecture.md hold in the code: no module imports a higher layer, no import cycle
inside gaia_gym, and scripts import only the package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "gaia_gym"


def _layers() -> dict[str, int]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    body = text.split("<!-- layers:", 1)[1]
    layers = {}
    for m in re.finditer(r"^\| (\d+) \| [^|]+ \| ([^|]+) \|$", body, re.M):
        for mod in m.group(2).split(","):
            layers[mod.strip()] = int(m.group(1))
    assert layers, "docs/architecture.md lost its layer table"
    return layers


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every gaia_gym module `path` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("gaia_gym")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("gaia_gym"):
            out.add(node.module)
            for a in node.names:  # `from gaia_gym.data import format` imports a module
                if (PKG.parent / (node.module.replace(".", "/") + "/" + a.name + ".py")).exists():
                    out.add(f"{node.module}.{a.name}")
    return out


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PKG.rglob("*.py")}


def _layer_of(mod: str, layers: dict[str, int]) -> int | None:
    best = None
    for name, layer in layers.items():  # the longest listed prefix decides
        inside = mod == name or (name != "gaia_gym" and mod.startswith(name + "."))  # the bare package: itself only
        if inside and (best is None or len(name) > len(best[0])):
            best = (name, layer)
    return None if best is None else best[1]


def test_every_module_has_a_layer():
    layers = _layers()
    missing = sorted(m for m in _graph() if _layer_of(m, layers) is None)
    assert not missing, f"modules not in docs/architecture.md's layer table: {missing}"


def test_no_module_imports_a_higher_layer():
    layers = _layers()
    bad = []
    for mod, deps in _graph().items():
        lm = _layer_of(mod, layers)
        for d in deps:
            ld = _layer_of(d, layers)
            if ld is not None and lm is not None and ld > lm:
                bad.append(f"{mod} (layer {lm}) imports {d} (layer {ld})")
    assert not bad, "imports against the layers:\n" + "\n".join(sorted(bad))


def test_the_layer_check_would_catch_an_upward_import():
    layers = _layers()
    assert _layer_of("gaia_gym.bundle", layers) < _layer_of("gaia_gym.train.world_model", layers)
    assert _layer_of("gaia_gym.models.world_model", layers) < _layer_of("gaia_gym.imagination", layers)


def test_no_import_cycle_inside_gaia_gym():
    g = _graph()
    g = {m: {d for d in deps if d in g and d != m} for m, deps in g.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g[m]):
            # a package importing its own submodules (re-exports) is not a cycle of responsibilities
            if d.startswith(m + "."):
                continue
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (c := visit(m)):
            raise AssertionError("import cycle: " + " -> ".join(c))


def test_scripts_import_only_the_package():
    bad = []
    for folder in ("agents", "examples", "benchmarks", "tests"):
        local = {p.stem for d in ("agents", "examples", "benchmarks") for p in (ROOT / d).glob("*.py")}
        for p in (ROOT / folder).glob("*.py"):
            text = p.read_text()
            if "sys.path" in text and p.name != "test_architecture.py":
                bad.append(f"{p.relative_to(ROOT)} edits sys.path")
            for node in ast.walk(ast.parse(text)):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                         else [])
                bad += [f"{p.relative_to(ROOT)} imports the script {n}" for n in names if n.split(".")[0] in local]
    assert not bad, "\n".join(bad)


def test_user_errors_are_gaia_gym_errors():
    """Library code raises the GaiaGymError family (what the CLI catches as one line), not bare builtins."""
    bare = []
    for p in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name) \
                    and node.exc.func.id in ("ValueError", "FileNotFoundError", "Exception"):
                bare.append(f"{p.relative_to(ROOT)}:{node.lineno} raises {node.exc.func.id}")
    assert not bare, "\n".join(bare)


def test_models_and_the_engine_stay_behind_their_seams():
    """models/ never reads the data pipeline or a simulator (shared facts live in gaia_gym.specs); the
    engine reaches a model only through its backend, apart from the two owners it shares with every
    layer: the token/action layout (models.layout) and the conditioning interface (models.conditions)."""
    g = _graph()
    bad = [f"{m} imports {d}" for m, deps in g.items() if m.startswith("gaia_gym.models")
           for d in deps if d.startswith(("gaia_gym.sims", "gaia_gym.data"))]
    allowed = {"gaia_gym.models.layout", "gaia_gym.models.conditions"}
    bad += [f"gaia_gym.imagination imports {d}" for d in g["gaia_gym.imagination"]
            if d.startswith(("gaia_gym.models", "gaia_gym.sims")) and d not in allowed]
    assert not bad, "\n".join(sorted(bad))
