"""Keep the line anchors of the theory notes current: every link from notes/*.md into src/ such as

    [`GaussianDiffusion.q_sample`](../src/dff/diffusion/process.py#L123)

names a function, method or class by the last dotted component of its text (backticks and a
trailing "()" stripped); this script rewrites `#L<n>` to the line of that `def NAME` / `class NAME`
in the linked file, found with `ast`. A name defined once in the file is taken as it is; a name
defined several times (`forward`, `__init__`) is looked up as Class.method, the method inside the
named class. Names it cannot place (missing, or still ambiguous) are listed and left alone.

    python scripts/relink_notes.py           # rewrite the notes, print every change
    python scripts/relink_notes.py --check   # change nothing; exit 1 if an anchor is stale or unplaceable
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTES = ROOT / "notes"
# [text](relative/path/into/src.py#L123): group 1 text, 2 path, 3 line
LINK = re.compile(r"\[([^\]\n]+)\]\(((?:\.\./)+src/[^)#\s]+\.py)#L(\d+)\)")


def link_name(text: str) -> list[str]:
    """The dotted name a link's text gives: '`GaussianDiffusion.q_sample()`' -> ['GaussianDiffusion', 'q_sample']."""
    name = text.strip().strip("`").strip()
    name = name.removesuffix("()")
    return name.split(".")


def definitions(path: Path) -> list[tuple[str, int]]:
    """(qualified name, line of its `def` / `class`) for every function, method and class in a file."""
    out: list[tuple[str, int]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = prefix + child.name
                out.append((qual, child.lineno))  # the def/class line, after any decorators
                walk(child, qual + ".")

    walk(ast.parse(path.read_text()), "")
    return out


def resolve(parts: list[str], defs: list[tuple[str, int]]) -> tuple[int | None, str]:
    """(line, "") for a name placed without doubt, else (None, why)."""
    last = parts[-1]
    named = [(q, n) for q, n in defs if q.split(".")[-1] == last]
    if len(named) == 1:
        return named[0][1], ""
    if not named:
        return None, f"no def/class {last} in the file"
    # ambiguous: match the link's dotted tail (Class.method) against the qualified names
    for k in range(len(parts), 1, -1):
        tail = ".".join(parts[-k:])
        hits = [n for q, n in named if q == tail or q.endswith("." + tail)]
        if len(hits) == 1:
            return hits[0], ""
    return None, f"{last} is defined {len(named)} times in the file; write the link as Class.{last}"


def relink(text: str, note: Path, problems: list[str], changes: list[str]) -> str:
    def fix(m: re.Match) -> str:
        label, rel, old = m.group(1), m.group(2), int(m.group(3))
        target = (note.parent / rel).resolve()
        where = f"{note.relative_to(ROOT)}: {label} -> {rel}"
        if not target.is_file():
            problems.append(f"{where}: the file does not exist")
            return m.group(0)
        line, why = resolve(link_name(label), definitions(target))
        if line is None:
            problems.append(f"{where}: {why}")
            return m.group(0)
        if line != old:
            changes.append(f"{where}: #L{old} -> #L{line}")
        return f"[{label}]({rel}#L{line})"

    return LINK.sub(fix, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if any anchor is stale or unplaceable")
    args = p.parse_args(argv)
    problems: list[str] = []  # links that cannot be placed
    stale = 0
    for note in sorted(NOTES.glob("*.md")):
        changes: list[str] = []
        old = note.read_text()
        new = relink(old, note, problems, changes)
        for c in changes:
            print(("stale " if args.check else "relinked ") + c)
        stale += len(changes)
        if new != old and not args.check:
            note.write_text(new)
    for pr in problems:
        print(f"cannot place {pr}", file=sys.stderr)
    if not stale and not problems:
        print("every link of notes/*.md points at its def/class line")
    return 1 if problems or (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
