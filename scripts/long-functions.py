#!/usr/bin/env python3
"""Lists non-test functions longer than a limit (default 80 lines) in the workspace's sources.

A function is counted from its `fn` line to the closing brace at the same indentation
(rustfmt's layout). Skipped: `tests/` directories, `tests.rs`/`proptests.rs` files, inline
`#[cfg(test)]` modules, and the generated command table. Exits 1 when any is found.
"""
import pathlib
import re
import sys

LIMIT = int(sys.argv[1]) if len(sys.argv) > 1 else 80
ROOT = pathlib.Path(__file__).resolve().parent.parent
SKIP_FILES = {"proxy/src/command/table.rs"}
FN = re.compile(r"^(\s*)(pub(\([^)]*\))? )?(const )?(async )?(unsafe )?(extern \"C\" )?fn (\w+)")


def sources():
    for path in sorted(ROOT.rglob("*.rs")):
        rel = path.relative_to(ROOT).as_posix()
        parts = rel.split("/")
        if parts[0] in ("target",) or "tests" in parts[:-1] or rel in SKIP_FILES:
            continue
        if parts[-1] in ("tests.rs", "proptests.rs"):
            continue
        yield rel, path.read_text().splitlines()


def long_functions(lines):
    test_mod_indent = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if test_mod_indent is not None:
            if line.startswith(test_mod_indent + "}"):
                test_mod_indent = None
            i += 1
            continue
        if line.strip() == "#[cfg(test)]" and i + 1 < len(lines) and re.match(r"^\s*(pub )?mod \w+ \{", lines[i + 1]):
            test_mod_indent = re.match(r"^(\s*)", lines[i + 1]).group(1)
            i += 2
            continue
        m = FN.match(line)
        if m and not line.rstrip().endswith(";"):
            indent = m.group(1)
            end = i
            while end < len(lines) and not (lines[end].startswith(indent + "}") and not lines[end].startswith(indent + "}" + " ")) :
                if end > i and FN.match(lines[end]) and len(FN.match(lines[end]).group(1)) <= len(indent):
                    break
                end += 1
            if end < len(lines) and lines[end].rstrip() == indent + "}":
                length = end - i + 1
                if length > LIMIT:
                    yield m.group(8), i + 1, length
        i += 1


found = 0
for rel, lines in sources():
    for name, line, length in long_functions(lines):
        print(f"{rel}:{line}: fn {name} is {length} lines")
        found += 1
if found:
    print(f"{found} non-test function(s) over {LIMIT} lines")
    sys.exit(1)
print(f"no non-test function over {LIMIT} lines")
