#!/usr/bin/env python3
"""Lists the import cycles between the modules of one crate, from its `crate::` paths.

    python3 scripts/module-cycles.py proxy/src          # exit 1 and the cycles, if any
    python3 scripts/module-cycles.py proxy/src --graph  # also every module's imports

A module is a file under the source directory (`a/b.rs` and `a/b/mod.rs` are `a::b`);
submodules count as part of their top-level module (`migration::source` is `migration`),
since layering is about the top-level modules. An edge `a -> b` is any `crate::b` path in
a's code outside `#[cfg(test)]` blocks. Cycles are found as strongly connected components
(Tarjan), so one line names every module of a knot, not every loop through it.
"""

import re
import sys
from pathlib import Path


def module_of(src: Path, file: Path) -> str:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts.pop()
    return parts[0] if parts else "crate"


def code_outside_tests(text: str) -> str:
    """The file without `#[cfg(test)]` items (the test module and test-only functions)."""
    out, i = [], 0
    marker = "#[cfg(test)]"
    while True:
        j = text.find(marker, i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        k = text.find("{", j)
        semi = text.find(";", j)
        if k < 0 or (0 <= semi < k):
            i = semi + 1 if semi >= 0 else len(text)
            continue
        depth, p = 0, k
        while p < len(text):
            if text[p] == "{":
                depth += 1
            elif text[p] == "}":
                depth -= 1
                if depth == 0:
                    break
            p += 1
        i = p + 1


def top_level_names(group: str):
    """The first path segment of each item of a `{a::b, c, d::{e, f}}` group."""
    names, depth, item = [], 0, ""
    for ch in group[1:-1] + ",":
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            m = re.match(r"\s*(\w+)", item)
            if m:
                names.append(m.group(1))
            item = ""
        else:
            item += ch
    return names


def braced(code: str, start: int) -> str:
    """The balanced `{…}` group beginning at `start`."""
    depth = 0
    for i in range(start, len(code)):
        depth += {"{": 1, "}": -1}.get(code[i], 0)
        if depth == 0:
            return code[start : i + 1]
    return code[start:]


def imports(src: Path):
    modules = {module_of(src, f) for f in src.rglob("*.rs")}
    graph = {m: set() for m in modules}
    for file in sorted(src.rglob("*.rs")):
        me = module_of(src, file)
        code = re.sub(r"//[^\n]*", "", code_outside_tests(file.read_text()))
        for m in re.finditer(r"\bcrate::(\{|\w+)", code):
            if m.group(1) == "{":
                names = top_level_names(braced(code, m.start(1)))
            else:
                names = [m.group(1)]
            graph[me].update(n for n in names if n in modules and n != me)
    return graph


def cycles(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    src = Path(sys.argv[1])
    graph = imports(src)
    if "--graph" in sys.argv:
        for m in sorted(graph):
            print(f"{m:<14} -> {', '.join(sorted(graph[m])) or '-'}")
    found = cycles(graph)
    for c in found:
        print("cycle: " + " <-> ".join(c))
    if not found:
        print(f"no import cycle among the {len(graph)} modules of {src}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
