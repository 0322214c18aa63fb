#!/usr/bin/env python3
"""Fails when the top-level modules of a crate's src/ (files and folders) import each other in a
circle, judged from `crate::` paths outside tests. Prints the arrows it found.

    python3 .ci/modgraph.py stages/src
"""
import pathlib
import re
import sys

src = pathlib.Path(sys.argv[1])
tops = {p.stem if p.is_file() else p.name
        for p in src.iterdir()
        if (p.is_file() and p.suffix == ".rs" and p.stem not in ("lib", "main")) or p.is_dir()}
paths = re.compile(r"\bcrate::(?:\{([^}]*)\}|(\w+))")
arrows = {t: set() for t in tops}
for f in src.rglob("*.rs"):
    top = f.relative_to(src).parts[0]
    me = top[:-3] if top.endswith(".rs") else top
    if me not in tops or f.name == "tests.rs":
        continue
    for m in paths.finditer(f.read_text(encoding="utf-8", errors="replace")):
        for name in re.split(r"[,\s]+", m.group(1) or m.group(2)):
            name = name.split("::")[0]
            if name in tops and name != me:
                arrows[me].add(name)


def circle_from(start):
    """A path from `start` back to itself, if there is one (depth-first)."""
    stack = [(start, [start])]
    seen = set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(arrows[node]):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


for t in sorted(tops):
    print(f"{t} -> {', '.join(sorted(arrows[t])) or '(nothing)'}")
circles = [c for c in (circle_from(t) for t in sorted(tops)) if c]
if circles:
    print("import circles:", *(" -> ".join(c) for c in circles), sep="\n  ")
    sys.exit(1)
print(f"{len(tops)} top-level modules, {sum(map(len, arrows.values()))} arrows, no circle")
