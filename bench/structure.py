"""The structure drawing: ecdit_scale's packages in the layers of DESIGN.md, who imports whom,
and every rule the imports break.

    python bench/structure.py                  # text drawing and the rules it checks
    python bench/structure.py --modules        # also every module-to-module import
    python bench/structure.py --png out.png    # the drawing as a picture (matplotlib)
    python bench/structure.py --root DIR       # another checkout

Every module under ecdit_scale/ is parsed with ``ast`` (nothing is imported), so absolute,
relative and function-level imports all count. tests/test_structure.py asserts the same rules
through this module, so the drawing and the test cannot disagree. Exit status 1 when a rule is
broken.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "ecdit_scale"

# Bottom first. A unit may import its own layer or a lower one, never a higher one. A unit is a
# top-level module or a subpackage (named relative to ecdit_scale; the longest name wins, so
# planner.hardware sits below the rest of planner). "ecdit_scale" is the package's __init__.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("ecdit_scale", "config", "zero", "errors", "files", "units", "checks",
                    "integers")),
    ("catalog", ("sizes", "params", "planner.hardware", "planner.device_profile",
                  "planner.interpolation", "planner.profile_fields", "planner.rank_sync",
                  "planner.link_fit", "planner.bounds", "planner.derived_profile")),
    ("model, planner, scaling", ("model", "planner", "scaling", "cards")),
    ("datasets", ("datasets",)),
    ("train, evaluation", ("train", "evaluation")),
    ("cli", ("cli", "__main__")),
)
# These never import torch, deepspeed or a unit above them, directly or through another module:
# `plan` and `fit` start instantly on a laptop without torch.
TORCH_FREE_LAYERS = ("foundation", "catalog")
TORCH_FREE_UNITS = ("planner", "scaling", "cards")
HEAVY_PACKAGES = ("torch", "deepspeed")
HEAVY_UNITS = ("model", "datasets", "train", "evaluation", "cli", "__main__")
RICH_UNITS = ("cli",)  # rich draws only in the CLI
MAX_LINES = 500


@dataclass(frozen=True)
class Import:
    source: str      # importing module, dotted
    target: str      # an ecdit_scale module (dotted), or an outside package's top-level name
    line: int
    lazy: bool       # inside a function body: runs when called, still a dependency
    internal: bool

    def where(self, tree: Tree) -> str:
        return f"{tree.rel(self.source)}:{self.line}" + (" (in a function)" if self.lazy else "")


@dataclass(repr=False)
class Tree:
    root: Path
    files: dict[str, Path]        # module -> file
    lines: dict[str, int]
    imports: list[Import]

    def __repr__(self) -> str:
        return f"Tree({self.root}: {len(self.files)} modules, {len(self.imports)} imports)"

    def rel(self, module: str) -> str:
        return self.files[module].relative_to(self.root).as_posix()

    def internal(self) -> list[Import]:
        return [i for i in self.imports if i.internal and i.target in self.files]


# ---------------------------------------------------------------------------------------------
# Reading the package
# ---------------------------------------------------------------------------------------------

def _module_name(path: Path, top: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(top.parent).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_pkg else parts), is_pkg


def _resolve_from(node: ast.ImportFrom, module: str, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_pkg else module.split(".")[:-1]
    parts = parts[:len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _imports_of(module: str, is_pkg: bool, tree: ast.AST, modules: set[str]) -> list[Import]:
    found: list[Import] = []

    def add(name: str, line: int, lazy: bool) -> None:
        internal = name == PACKAGE or name.startswith(PACKAGE + ".")
        found.append(Import(module, name if internal else name.split(".")[0], line, lazy, internal))

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, child.lineno, lazy)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve_from(child, module, is_pkg)
                for alias in child.names:
                    sub = f"{base}.{alias.name}"  # `from pkg import module` names a module
                    add(sub if sub in modules else base, child.lineno, lazy)
            visit(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                    ast.Lambda)))

    visit(tree, False)
    return found


def scan(root: Path | str) -> Tree:
    """Parse every module under ``root/ecdit_scale``."""
    root = Path(root).resolve()
    top = root / PACKAGE
    paths = sorted(p for p in top.rglob("*.py") if "__pycache__" not in p.parts)
    names = {p: _module_name(p, top) for p in paths}
    modules = {name for name, _ in names.values()}
    files, lines, imports = {}, {}, []
    for path, (name, is_pkg) in names.items():
        text = path.read_text(encoding="utf-8")
        files[name], lines[name] = path, len(text.splitlines())
        imports += _imports_of(name, is_pkg, ast.parse(text, filename=str(path)), modules)
    return Tree(root, files, lines, imports)


# ---------------------------------------------------------------------------------------------
# Units and layers
# ---------------------------------------------------------------------------------------------

_LAYER_OF_UNIT = {unit: i for i, (_, units) in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str | None:
    """The layer table's unit for a module: its longest matching name, or None."""
    if module == PACKAGE:
        return PACKAGE
    rel = module[len(PACKAGE) + 1:]
    matches = [u for u in _LAYER_OF_UNIT if u != PACKAGE and (rel == u or rel.startswith(u + "."))]
    return max(matches, key=len) if matches else None


def layer_of(module: str) -> int | None:
    unit = unit_of(module)
    return None if unit is None else _LAYER_OF_UNIT[unit]


def _torch_free(module: str) -> bool:
    unit, layer = unit_of(module), layer_of(module)
    return unit in TORCH_FREE_UNITS or (layer is not None and LAYERS[layer][0] in TORCH_FREE_LAYERS)


def unit_edges(tree: Tree) -> dict[tuple[str, str], list[Import]]:
    edges: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for imp in tree.internal():
        a, b = unit_of(imp.source), unit_of(imp.target)
        if a and b and a != b:
            edges[a, b].append(imp)
    return edges


# ---------------------------------------------------------------------------------------------
# The rules: each returns one line per offence, empty when the rule holds
# ---------------------------------------------------------------------------------------------

def unplaced(tree: Tree) -> list[str]:
    return [f"{tree.rel(m)}: module {m} has no layer; add its unit to LAYERS in bench/structure.py"
            for m in tree.files if unit_of(m) is None]


def unresolved(tree: Tree) -> list[str]:
    return [f"{i.where(tree)}: imports {i.target}, which is no module or package here"
            for i in tree.imports if i.internal and i.target not in tree.files]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component that has one (Tarjan)."""
    index, low, stack, on_stack, comps = {}, {}, [], set(), []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(set(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    cycles = []
    for comp in comps:
        if len(comp) == 1 and not any(v in graph.get(v, ()) for v in comp):
            continue
        start = min(comp)
        paths, seen = {start: [start]}, {start}
        queue = [start]
        while queue:  # shortest way from start back to start inside the component
            v = queue.pop(0)
            nxt = sorted(w for w in graph.get(v, ()) if w in comp)
            if start in nxt:
                cycles.append(paths[v] + [start])
                break
            for w in nxt:
                if w not in seen:
                    seen.add(w)
                    paths[w] = paths[v] + [w]
                    queue.append(w)
    return cycles


def module_cycles(tree: Tree) -> list[str]:
    graph: dict[str, set[str]] = defaultdict(set)
    where: dict[tuple[str, str], Import] = {}
    for imp in tree.internal():
        if imp.source != imp.target:
            graph[imp.source].add(imp.target)
            where.setdefault((imp.source, imp.target), imp)
    return [" -> ".join(c) + "  ["
            + ", ".join(where[a, b].where(tree) for a, b in zip(c, c[1:], strict=False))
            + "]" for c in _cycles(graph)]


def unit_cycles(tree: Tree) -> list[str]:
    edges = unit_edges(tree)
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    return [" -> ".join(c) + "  ["
            + ", ".join(edges[a, b][0].where(tree) for a, b in zip(c, c[1:], strict=False))
            + "]" for c in _cycles(graph)]


def upward(tree: Tree) -> list[str]:
    out = []
    for imp in tree.internal():
        a, b = layer_of(imp.source), layer_of(imp.target)
        if a is not None and b is not None and b > a:
            out.append(f"{imp.where(tree)}: {unit_of(imp.source)} ({LAYERS[a][0]}) imports "
                       f"{imp.target} ({LAYERS[b][0]}), a higher layer")
    return out


def torch_reach(tree: Tree) -> list[str]:
    """Torch-free modules that import torch, deepspeed or a heavy unit, directly or through other
    modules (every import counts, and so does each package __init__ that an import runs)."""
    def parents(module: str) -> list[str]:
        parts = module.split(".")
        return [p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in tree.files]

    by_source: dict[str, list[Import]] = defaultdict(list)
    for imp in tree.imports:
        by_source[imp.source].append(imp)
    out = []
    for start in sorted(m for m in tree.files if _torch_free(m)):
        path = {start: [start]}
        queue = [start] + parents(start)
        for p in parents(start):
            path[p] = [start, p]
        offence = None
        while queue and offence is None:
            m = queue.pop(0)
            for imp in by_source[m]:
                if not imp.internal and imp.target in HEAVY_PACKAGES:
                    offence = (path[m], f"imports {imp.target} at {imp.where(tree)}")
                    break
                if imp.internal and imp.target in tree.files:
                    if unit_of(imp.target) in HEAVY_UNITS:
                        offence = (path[m] + [imp.target], f"at {imp.where(tree)}")
                        break
                    for nxt in [imp.target] + parents(imp.target):
                        if nxt not in path:
                            path[nxt] = path[m] + [nxt]
                            queue.append(nxt)
        if offence:
            chain, how = offence
            out.append(f"{tree.rel(start)}: {' -> '.join(chain)} {how}")
    return out


def rich_outside_cli(tree: Tree) -> list[str]:
    places = {i.where(tree): None for i in tree.imports
              if not i.internal and i.target == "rich" and unit_of(i.source) not in RICH_UNITS}
    return [f"{where}: imports rich outside cli/" for where in places]


def long_files(tree: Tree) -> list[str]:
    return [f"{tree.rel(m)}: {n} lines (at most {MAX_LINES})"
            for m, n in sorted(tree.lines.items()) if n > MAX_LINES]


RULES = (
    ("every module has a layer", unplaced),
    ("every import of ecdit_scale resolves", unresolved),
    ("no cycles between modules", module_cycles),
    ("no cycles between packages", unit_cycles),
    ("no upward imports", upward),
    ("planner, scaling and the layers below never reach torch, deepspeed, model or train",
     torch_reach),
    ("rich only under cli/", rich_outside_cli),
    (f"no source file over {MAX_LINES} lines", long_files),
)


# ---------------------------------------------------------------------------------------------
# The drawing
# ---------------------------------------------------------------------------------------------

def _units(tree: Tree) -> dict[str, list[str]]:
    units: dict[str, list[str]] = defaultdict(list)
    for m in tree.files:
        units[unit_of(m) or "?"].append(m)
    return units


def _bad_pairs(tree: Tree) -> set[tuple[str, str]]:
    """Unit edges that point up a layer or lie on a cycle between units."""
    edges = unit_edges(tree)
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    bad = {(a, b) for a, b in edges if _LAYER_OF_UNIT[b] > _LAYER_OF_UNIT[a]}
    for cycle in _cycles(graph):
        bad |= set(zip(cycle, cycle[1:], strict=False))
    return bad


def draw_text(tree: Tree, modules: bool = False) -> str:
    units, edges, bad = _units(tree), unit_edges(tree), _bad_pairs(tree)
    out = [f"{PACKAGE}: {len(tree.files)} modules, {sum(tree.lines.values())} lines. Top layer "
           "first; each unit lists what it imports (* only inside functions, ! upward or in a "
           "cycle)."]
    for i in reversed(range(len(LAYERS))):
        name, members = LAYERS[i]
        out.append(f"\n[{i}] {name}")
        for unit in members:
            if unit not in units:
                continue
            n = sum(tree.lines[m] for m in units[unit])
            deps = sorted((b for a, b in edges if a == unit), key=lambda b: (-_LAYER_OF_UNIT[b], b))
            marks = [b + ("*" if all(x.lazy for x in edges[unit, b]) else "")
                     + ("!" if (unit, b) in bad else "") for b in deps]
            out.append(f"    {unit:<18} {len(units[unit]):>2} modules {n:>5} lines"
                       + (f"  -> {', '.join(marks)}" if marks else ""))
    if "?" in units:
        out.append(f"\n[?] no layer: {', '.join(sorted(units['?']))}")
    if modules:
        out.append("\nmodule imports:")
        pairs = sorted({(i.source, i.target, i.lazy) for i in tree.internal()
                        if i.source != i.target})
        out += [f"    {a} -> {b}" + (" *" if lazy else "") for a, b, lazy in pairs]
    out.append("\nrules:")
    for title, rule in RULES:
        found = rule(tree)
        verdict = f"NO  {title}: {len(found)}" if found else f"ok  {title}"
        out.append(f"    {verdict}")
        out += [f"          {line}" for line in found]
    return "\n".join(out)


def draw_png(tree: Tree, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units, edges, bad = _units(tree), unit_edges(tree), _bad_pairs(tree)
    pos = {}
    for i, (_, members) in enumerate(LAYERS):
        present = [u for u in members if u in units]
        for j, unit in enumerate(present):
            pos[unit] = ((j + 1) / (len(present) + 1), i)
    fig, ax = plt.subplots(figsize=(11, 1.4 * len(LAYERS) + 1))
    for (a, b), imps in sorted(edges.items()):
        if a in pos and b in pos:
            color = "crimson" if (a, b) in bad else "0.55"
            same_layer = pos[a][1] == pos[b][1]  # bend these well clear of the boxes between
            ax.annotate("", xy=pos[b], xytext=pos[a], arrowprops=dict(
                arrowstyle="-|>", color=color, lw=1.6 if (a, b) in bad else 0.8,
                linestyle=":" if all(x.lazy for x in imps) else "-", shrinkA=14, shrinkB=14,
                connectionstyle=f"arc3,rad={0.45 if same_layer else 0.08}"))
    for unit, (x, y) in pos.items():
        n = sum(tree.lines[m] for m in units[unit])
        over = any(tree.lines[m] > MAX_LINES for m in units[unit])
        ax.text(x, y, f"{unit}\n{n} lines", ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round", fc="khaki" if over else "white", ec="0.3"))
    ax.set_yticks(range(len(LAYERS)), [name for name, _ in LAYERS])
    ax.set_xticks([])
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, len(LAYERS) - 0.4)
    broken = sum(bool(rule(tree)) for _, rule in RULES)
    ax.set_title(f"{PACKAGE} imports (red: upward or in a cycle; dotted: only inside functions; "
                 f"yellow: a file over {MAX_LINES} lines; {broken} of {len(RULES)} rules broken)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                    help="the checkout to draw (default: this one)")
    ap.add_argument("--modules", action="store_true", help="also list module-to-module imports")
    ap.add_argument("--png", type=Path, help="also draw the units and their imports to this PNG")
    args = ap.parse_args(argv)
    if not (args.root / PACKAGE).is_dir():
        print(f"--root {args.root}: no {PACKAGE}/ folder there", file=sys.stderr)
        return 2
    tree = scan(args.root)
    print(draw_text(tree, modules=args.modules))
    if args.png:
        draw_png(tree, args.png)
        print(f"wrote {args.png}")
    return 1 if any(rule(tree) for _, rule in RULES) else 0


if __name__ == "__main__":
    sys.exit(main())
