#!/usr/bin/env python3
"""Report import cycles between the modules of Rust crates.

Usage: cycles.py [--fold-inline] [--edges] CRATE_DIR_OR_ROOT_FILE...

For each crate root (src/lib.rs, src/main.rs, src/bin/*.rs of each CRATE_DIR,
or a root file given directly) it walks the `mod` tree, collects every path
that names a module of the same crate -- `use crate::..`, `use super::..`,
`use self::..`, inline `crate::a::b` paths, and `child::..` paths in the
module that declares `child` -- and reports the strongly connected
components of the resulting module graph (every cycle lives in one).

Resolution rules:
- a path resolves to the deepest module it names; an item re-exported by a
  `pub use` in that module (a facade such as lib.rs) is followed to the module
  that defines it, so `crate::Store` counts as an import of wherever `Store`
  is re-exported from (or of lib.rs when lib.rs defines it);
- a `pub use` of the module's own descendants is a facade and no edge,
  unless the module's own code uses the name it re-exports (lib.rs's
  `struct Store { .. LimitKind .. }` with `pub use limits::LimitKind` is an
  edge from the root to `limits`);
- declaring `mod x;` is no edge;
- inline modules (`mod tests { .. }`) are modules of their own, so a test
  module's `use crate::other` never closes a cycle; `--fold-inline` folds
  them into their file's module instead (test imports then count too, and
  a test's `use super::*` still means its own file's module).
- a heuristic: comments and literals are blanked, macros are not expanded,
  and a path's head that is neither `crate`/`self`/`super` nor a child module
  of the module it is written in is taken as external.

`--edges` also prints every edge found.

Exit status: 1 when any cycle is found, else 0.
"""

import os
import re
import sys
from collections import defaultdict

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_code(src):
    """Blank comments, string and char literals, keeping offsets and newlines."""
    out = list(src)
    i, n = 0, len(src)

    def blank(a, b):
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            blank(i, j)
            i = j
        elif (m := re.compile(r'b?r(#*)"').match(src, i)) and (
            i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")
        ):
            end = '"' + m.group(1)
            j = src.find(end, m.end())
            j = n if j < 0 else j + len(end)
            blank(i, j)
            i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            blank(i, j + 1)
            i = j + 1
        elif c == "'":
            m = re.compile(r"'(\\u\{[0-9a-fA-F]+\}|\\x[0-9a-fA-F]{2}|\\.|[^\\'\n])'").match(src, i)
            if m:
                blank(i, m.end())
                i = m.end()
            else:
                i += 1  # a lifetime
        else:
            i += 1
    return "".join(out)


def parse_use_tree(text):
    """`a::{b, c::{d as e}, self}` -> [['a','b'], ['a','c','d'], ['a']]."""
    text = re.sub(r"\s+", "", text)
    paths = []

    def walk(s, prefix):
        # split s at top-level commas
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        if cur:
            parts.append(cur)
        for part in parts:
            if not part:
                continue
            if "{" in part:
                head, _, rest = part.partition("{")
                head = head.rstrip(":")
                segs = [x for x in head.split("::") if x] if head else []
                walk(rest[: rest.rfind("}")], prefix + segs)
            else:
                segs = [x for x in part.split("::") if x]
                if segs == ["self"]:
                    paths.append(list(prefix))
                else:
                    paths.append(prefix + segs)

    walk(text, [])
    return paths


def split_as(raw):
    """Use-tree text with its `as` renames removed (whitespace-aware)."""
    return re.sub(r"\s+as\s+" + IDENT, "", raw)


class Module:
    def __init__(self, path, file, inline_test=False):
        self.path = path  # tuple of names from the crate root
        self.file = file
        self.children = set()
        self.uses = []  # (segments, is_pub_use, line, scope): scope resolves the path
        self.reexports = {}  # name -> segments (from this module's context)
        self.glob_reexports = []  # segments
        self.inline_test = inline_test
        self.idents = {}  # bare identifier used outside `use` -> first line


class Crate:
    def __init__(self, root_file, fold_inline):
        self.root_file = root_file
        self.fold_inline = fold_inline
        self.modules = {}
        self.load_file((), root_file, is_root=True)

    def load_file(self, path, file, is_root=False):
        with open(file, encoding="utf-8") as f:
            raw = f.read()
        code = strip_code(raw)
        base = os.path.basename(file)
        if is_root or base == "mod.rs":
            child_dir = os.path.dirname(file)
        else:
            child_dir = os.path.join(os.path.dirname(file), base[:-3])
        self.scan(path, file, code, child_dir)

    def module(self, path, file, inline_test=False):
        if path not in self.modules:
            self.modules[path] = Module(path, file, inline_test)
        return self.modules[path]

    def scan(self, path, file, code, child_dir):
        """Walk one file: inline modules, `mod x;`, uses and inline paths."""
        line_of = lambda pos: code.count("\n", 0, pos) + 1  # noqa: E731
        # stack of (graph node, scope paths resolve in, brace depth at which
        # it closes); they differ only inside an inline module folded into
        # its file's module
        stack = [(path, path, None)]
        self.module(path, file)
        depth = 0
        i, n = 0, len(code)
        pending_test_attr = False
        token = re.compile(
            r"(?P<attr>#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\])"
            r"|(?P<mod>\b(?:pub(?:\s*\([^)]*\))?\s+)?mod\s+(?P<mname>" + IDENT + r")\s*(?P<mend>[;{]))"
            r"|(?P<use>\b(?P<pub>pub(?:\s*\([^)]*\))?\s+)?use\s+(?P<tree>[^;]+);)"
            r"|(?P<path>(?<![\w:])(?P<phead>crate|super|self|" + IDENT + r")(?:\s*::\s*(?:" + IDENT + r"|\{))+)"
            r"|(?P<open>\{)|(?P<close>\})"
            r"|(?P<other>#\s*\[)"
            r"|(?P<ident>\b" + IDENT + r"\b)"
        )
        while i < n:
            m = token.search(code, i)
            if not m:
                break
            cur_path, scope = stack[-1][0], stack[-1][1]
            cur = self.modules[cur_path]
            if m.group("attr"):
                pending_test_attr = True
                i = m.end()
                continue
            if m.group("mod"):
                name = m.group("mname")
                child = scope + (name,)
                if m.group("mend") == ";":
                    cur.children.add(name)
                    for cand in (os.path.join(child_dir, name + ".rs"), os.path.join(child_dir, name, "mod.rs")):
                        if os.path.exists(cand):
                            self.load_file(child, cand)
                            break
                    else:
                        print(f"warning: {file}: module file for `{name}` not found", file=sys.stderr)
                else:
                    depth += 1
                    if self.fold_inline:
                        stack.append((cur_path, child, depth))
                    else:
                        cur.children.add(name)
                        self.module(child, file, inline_test=pending_test_attr)
                        stack.append((child, child, depth))
                pending_test_attr = False
                i = m.end()
                continue
            pending_test_attr = False if not m.group("other") else pending_test_attr
            if m.group("use"):
                tree = split_as(m.group("tree"))
                is_pub = bool(m.group("pub"))
                for segs in parse_use_tree(tree):
                    cur.uses.append((segs, is_pub, line_of(m.start()), scope))
                    if is_pub and segs:
                        if segs[-1] == "*":
                            cur.glob_reexports.append(segs[:-1])
                        else:
                            alias = re.search(re.escape(segs[-1]) + r"\s+as\s+(" + IDENT + ")", m.group("tree"))
                            cur.reexports[alias.group(1) if alias else segs[-1]] = segs
                i = m.end()
                continue
            if m.group("path"):
                segs = [s for s in re.split(r"\s*::\s*", m.group("path")) if s and s != "{"]
                cur.uses.append((segs, False, line_of(m.start()), scope))
                cur.idents.setdefault(segs[0], line_of(m.start()))
                i = m.end()
                continue
            if m.group("ident"):
                cur.idents.setdefault(m.group("ident"), line_of(m.start()))
                i = m.end()
                continue
            if m.group("open"):
                depth += 1
            elif m.group("close"):
                if stack[-1][2] == depth:
                    stack.pop()
                depth -= 1
            i = m.end()

    # --- resolution -----------------------------------------------------

    def anchor(self, mod_path, segs):
        """Where a path starts: (module path, remaining segments) or None."""
        if not segs:
            return None
        head = segs[0]
        if head == "crate":
            return (), segs[1:]
        if head in ("self", "super"):
            p = mod_path
            rest = list(segs)
            while rest and rest[0] in ("self", "super"):
                if rest[0] == "super":
                    p = p[:-1]
                rest = rest[1:]
            return p, rest
        here = self.modules.get(mod_path)
        if here is not None and head in here.children:
            return mod_path, segs
        return None  # an external crate, a std path, a type's associated item...

    def resolve(self, mod_path, segs, seen=None):
        """Module that a path (seen from mod_path) points into, or None."""
        a = self.anchor(mod_path, segs)
        if a is None:
            return None
        p, rest = a
        while rest and rest[0] in self.modules.get(p, Module(p, None)).children:
            p = p + (rest[0],)
            rest = rest[1:]
        seen = set() if seen is None else seen
        if rest and p in self.modules and (p, rest[0]) not in seen:
            seen.add((p, rest[0]))
            target = self.modules[p]
            if rest[0] in target.reexports:
                deeper = self.resolve(p, target.reexports[rest[0]], seen)
                if deeper is not None:
                    return deeper
        return p

    def node_of(self, path):
        """The graph node a resolved path belongs to: itself, or with
        --fold-inline the nearest enclosing module that has a node."""
        while path not in self.modules and path:
            path = path[:-1]
        return path

    def edges(self):
        """{(from, to): [(file, line), ...]} between distinct modules."""
        out = defaultdict(list)
        for path, mod in self.modules.items():
            for segs, is_pub, line, scope in mod.uses:
                to = self.resolve(scope, segs)
                if to is not None and self.fold_inline:
                    to = self.node_of(to)
                if to is None or to == path:
                    continue
                # a facade re-exporting its own descendants is no dependency,
                # unless the facade's own code uses the name it re-exports
                if is_pub and to[: len(path)] == path:
                    used = segs and segs[-1] in mod.idents and segs[-1] != "*"
                    if not used:
                        continue
                    line = mod.idents[segs[-1]]
                out[(path, to)].append((mod.file, line))
        return out


def sccs(nodes, adj):
    index, low, on, stack, res, counter = {}, {}, set(), [], [], [0]
    sys.setrecursionlimit(10000)

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in adj.get(v, ()):
            if w not in index:
                strong(w)
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
            res.append(comp)

    for v in nodes:
        if v not in index:
            strong(v)
    return res


def name(path, crate_label):
    return crate_label + ("::" + "::".join(path) if path else "")


def crate_roots(arg):
    if os.path.isfile(arg):
        return [arg]
    src = os.path.join(arg, "src")
    roots = [os.path.join(src, f) for f in ("lib.rs", "main.rs") if os.path.exists(os.path.join(src, f))]
    bindir = os.path.join(src, "bin")
    if os.path.isdir(bindir):
        for f in sorted(os.listdir(bindir)):
            p = os.path.join(bindir, f)
            if f.endswith(".rs"):
                roots.append(p)
            elif os.path.exists(os.path.join(p, "main.rs")):
                roots.append(os.path.join(p, "main.rs"))
    return roots


def main(argv):
    fold = "--fold-inline" in argv
    show_edges = "--edges" in argv
    args = [a for a in argv if not a.startswith("--")]
    if not args:
        print(__doc__)
        return 2
    found = False
    for arg in args:
        for root in crate_roots(arg):
            label = os.path.relpath(root)
            crate = Crate(root, fold)
            edges = crate.edges()
            adj = defaultdict(set)
            for a, b in edges:
                adj[a].add(b)
            comps = [c for c in sccs(list(crate.modules), adj) if len(c) > 1]
            if show_edges:
                for (a, b), locs in sorted(edges.items()):
                    print(f"  {name(a, 'crate')} -> {name(b, 'crate')}")
            if not comps:
                print(f"{label}: no cycles ({len(crate.modules)} modules)")
                continue
            found = True
            print(f"{label}: {len(comps)} cycle(s)")
            for comp in comps:
                members = set(comp)
                print("  among " + ", ".join(sorted(name(p, "crate") for p in comp)) + ":")
                for (a, b), locs in sorted(edges.items()):
                    if a in members and b in members:
                        where = ", ".join(f"{os.path.relpath(f)}:{ln}" for f, ln in locs[:4])
                        more = f" (+{len(locs) - 4})" if len(locs) > 4 else ""
                        print(f"    {name(a, 'crate')} -> {name(b, 'crate')}   [{where}{more}]")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
