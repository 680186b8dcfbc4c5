#!/usr/bin/env python3
"""Checks that the crate dependency list in README.md's Layout section is
true: for every crate it lists, the `ttsq-*` crates it names are exactly the
normal dependencies in that crate's Cargo.toml (`ttsq-core` and
`ttsq-config`, which nearly every crate uses, are left out of the list), and
every crate under crates/ is listed. Prints one line in deploy/check.py's
format; exits 1 when the two disagree.

Usage: deploy/check_layout.py [REPO_ROOT]
"""

import re
import sys
from pathlib import Path

LEFT_OUT = {"ttsq-core", "ttsq-config"}
MARKER = "How the crates depend on each other"


def listed(readme: str) -> dict[str, set[str]]:
    """The crate → dependencies lines of the README's dependency block."""
    start = readme.index(MARKER)
    block = readme[start:].split("```", 2)[1]
    graph = {}
    for line in block.strip().splitlines():
        name, _, deps = line.partition("→")
        deps = deps.strip()
        graph[name.strip()] = set() if deps == "—" else {d.strip() for d in deps.split(",")}
    return graph


def manifests(root: Path) -> dict[str, set[str]]:
    """Each service crate's normal `ttsq-*` dependencies, from its manifest."""
    graph = {}
    for manifest in sorted(root.glob("crates/*/Cargo.toml")):
        text = manifest.read_text()
        section = re.search(r"^\[dependencies\]\n(.*?)(?=^\[|\Z)", text, re.S | re.M)
        body = section.group(1) if section else ""
        deps = set(re.findall(r"^(ttsq[a-z-]*)\s*[.=]", body, re.M))
        graph[manifest.parent.name] = deps - LEFT_OUT
    return graph


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    problems = []
    try:
        documented = listed((root / "README.md").read_text())
    except ValueError:
        documented = {}
        problems.append(f"README.md has no dependency list after “{MARKER}”")
    actual = manifests(root)
    for name, deps in sorted(actual.items()):
        if name not in documented:
            if deps and name not in {"ttsq-testkit", "ttsq-bench", "ttsq-fake-provider", "ttsq-client"}:
                problems.append(f"{name} is not in the README's dependency list")
            continue
        if documented[name] != deps:
            missing = ", ".join(sorted(deps - documented[name])) or "nothing"
            extra = ", ".join(sorted(documented[name] - deps)) or "nothing"
            problems.append(f"{name}: the README lacks {missing} and lists {extra} in excess")
    for name in sorted(set(documented) - set(actual)):
        problems.append(f"the README lists {name}, which is no crate")
    if problems:
        print("FAIL  layout: README dependency list", flush=True)
        for problem in problems:
            print(f"        - {problem}", flush=True)
        return 1
    print(f"ok    layout: README dependency list ({len(documented)} crates)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
