#!/usr/bin/env python3
"""Checks the import grouping STYLE.md asks of every Rust file: the leading
`use` items come in groups separated by one blank line, std (std, core,
alloc) first, then other crates, then this crate (crate, super, self), each
group of one kind. rustfmt's `group_imports = "StdExternalCrate"` would
enforce it (and `imports_granularity = "Crate"`: one `use` item per
crate, also checked here), but those options are nightly-only, and the toolchain is stable.
Usage: check_imports.py [--fix] FILE|DIR..."""
import os
import re
import sys

KINDS = ("std", "external", "crate")


def kind(path: str) -> int:
    root = re.split(r"::|[;{ ]", path.strip(), maxsplit=1)[0]
    if root in ("std", "core", "alloc"):
        return 0
    if root in ("crate", "super", "self"):
        return 2
    return 1


def use_items(lines):
    """(start, end, kind, blank_before) of each top-level private `use`
    item in the file's first block of uses (re-exports and `mod`s aside)."""
    items, i, blank = [], 0, False
    while i < len(lines):
        line = lines[i]
        if line.startswith("use "):
            start = i
            while not lines[i].rstrip().endswith(";"):
                i += 1
            root = re.split(r"::|[;{ ]", line[4:].strip(), maxsplit=1)[0]
            items.append((start, i, kind(line[4:]), blank, root))
            blank = False
        elif line.strip() == "":
            blank = True
        elif items and not line.startswith(("pub use", "mod ", "pub mod", "pub(crate) mod", "#[", "//")):
            break
        i += 1
    return items


def problems(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    found = []
    items = use_items(lines)
    for previous, current in zip(items, items[1:]):
        if current[2] < previous[2]:
            found.append(f"{path}:{current[0] + 1}: {KINDS[current[2]]} import after {KINDS[previous[2]]}")
        elif current[2] != previous[2] and not current[3]:
            found.append(f"{path}:{current[0] + 1}: no blank line between {KINDS[previous[2]]} and {KINDS[current[2]]} imports")
        elif current[2] == previous[2] and current[3]:
            found.append(f"{path}:{current[0] + 1}: {KINDS[current[2]]} imports split by a blank line")
    seen = {}
    for item in items:
        if item[4] in seen:
            found.append(f"{path}:{item[0] + 1}: a second `use {item[4]}::…` (one item per crate)")
        seen[item[4]] = item
    return found


def files(args):
    for arg in args:
        if os.path.isdir(arg):
            for root, _, names in os.walk(arg):
                if "/target" in root or "/." in root:
                    continue
                for name in names:
                    if name.endswith(".rs"):
                        yield os.path.join(root, name)
        else:
            yield arg


def main():
    found = [p for f in files(sys.argv[1:] or ["crates"]) for p in problems(f)]
    for p in found:
        print(p)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
