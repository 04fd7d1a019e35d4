"""The theory notes (notes/*.md) stay true to the code: every link into src/ lands on the `def` or
`class` line of the function it names, every function of dff.diffusion that cites an equation or an
algorithm is linked from some note, the notes exist with the sections the course promises, and
their math renders on GitHub (balanced `$$`, closed ```math fences, paired inline `$`)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTES_DIR = ROOT / "notes"
NOTES = sorted(NOTES_DIR.glob("*.md"))
DIFFUSION = ROOT / "src" / "dff" / "diffusion"
FIX = "run python scripts/relink_notes.py to move the anchors to the current lines"

EXPECTED = {
    "01": ("01_diffusion_process.md", "01_sandbox.ipynb"),
    "01b": ("01b_why_it_works.md", "01b_why_it_works.ipynb"),
    "02": ("02_pixel_diffusion.md", "02_pixel.ipynb"),
    "03": ("03_conditional_pixel_diffusion.md", "03_conditional_pixel.ipynb"),
    "04": ("04_latent_diffusion.md", "04_latent.ipynb"),
    "05": ("05_conditional_latent_diffusion.md", "05_conditional_latent.ipynb"),
}

# [text](../src/path.py#L123) or [text](../src/path.py): group 1 text, 2 path, 3 line (or None)
LINK = re.compile(r"\[([^\]\n]+)\]\(((?:\.\./)+src/[^)#\s]+)(?:#L(\d+))?\)")
CITES = re.compile(r"\b(Eq\.|Eqs\.|Algorithm)\s*\d")


def link_name(text: str) -> list[str]:
    """'`GaussianDiffusion.q_sample()`' -> ['GaussianDiffusion', 'q_sample']."""
    return text.strip().strip("`").strip().removesuffix("()").split(".")


def links(text: str, base: Path = NOTES_DIR) -> list[tuple[str, Path, int | None]]:
    """(link text, resolved target, anchored line or None) of every link into src/ of a note in `base`."""
    return [(m.group(1), (base / m.group(2)).resolve(), int(m.group(3)) if m.group(3) else None)
            for m in LINK.finditer(text)]


def note_links(note: Path) -> list[tuple[str, Path, int | None]]:
    return links(note.read_text(), note.parent)


# ---------------------------------------------------------------------- (a) links land on their def
def broken_links(name: str, text: str, base: Path = NOTES_DIR) -> list[str]:
    """Every link into src/ whose file is missing, or whose anchored line is not `def NAME` / `class NAME`."""
    bad = []
    for label, target, line in links(text, base):
        shown = target.relative_to(ROOT) if target.is_relative_to(ROOT) else target
        where = f"{name}: [{label}] -> {shown}"
        if not target.is_relative_to(ROOT / "src"):
            bad.append(f"{where}: outside src/")
        elif not target.is_file():
            bad.append(f"{where}: no such file")
        elif line is not None:
            fn = link_name(label)[-1]
            lines = target.read_text().splitlines()
            held = lines[line - 1].strip() if 0 < line <= len(lines) else "<past the end of the file>"
            if not re.match(rf"(async\s+)?(def|class)\s+{re.escape(fn)}\b", held):
                bad.append(f"{where}#L{line}: that line is {held[:60]!r}, not `def {fn}`")
    return bad


def test_notes_link_into_src():
    assert sum(len(note_links(n)) for n in NOTES) >= 5 * 5, "the notes should link their equations to the code"


def test_links_land_on_their_def_lines():
    """All broken links of all notes at once, with the fix."""
    bad = [b for note in NOTES for b in broken_links(note.name, note.read_text(), note.parent)]
    assert not bad, f"{len(bad)} links of notes/ do not land on their function ({FIX}):\n" + "\n".join(bad)


def test_link_check_catches_a_moved_function():
    """The check passes the right anchor and fails one line off, a missing file and a wrong name."""
    lines = (DIFFUSION / "process.py").read_text().splitlines()
    n = next(i for i, s in enumerate(lines, 1) if s.strip().startswith("def q_sample("))
    link = "[`GaussianDiffusion.{}`](../src/dff/diffusion/{}#L{})"
    assert not broken_links("x.md", link.format("q_sample", "process.py", n))
    assert broken_links("x.md", link.format("q_sample", "process.py", n + 1))
    assert broken_links("x.md", link.format("q_sample", "nowhere.py", n))
    assert broken_links("x.md", link.format("q_posterior", "process.py", n))


# ---------------------------------------------------------------------- (b) cited functions are linked
def citing_functions(path: Path) -> dict[str, int]:
    """{qualified name: def line} of the functions and methods of a module whose docstring cites an
    equation or an algorithm ("Eq. 4", "Eqs. 6-7", "Algorithm 2")."""
    found = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = prefix + child.name
                if not isinstance(child, ast.ClassDef) and CITES.search(ast.get_docstring(child) or ""):
                    found[qual] = child.lineno
                walk(child, qual + ".")

    walk(ast.parse(path.read_text()), "")
    return found


def linked_lines() -> set[tuple[Path, int]]:
    return {(target, line) for note in NOTES for _, target, line in note_links(note) if line is not None}


def test_citing_functions_are_found():
    """The scan sees the functions the notes are built on (so an empty scan cannot pass)."""
    names = {q for p in DIFFUSION.glob("*.py") for q in citing_functions(p)}
    assert {"GaussianDiffusion.q_sample", "GaussianDiffusion.q_posterior", "ddpm", "ddim", "dpmpp_2m"} <= names


def test_every_function_citing_an_equation_is_linked():
    """A function of dff.diffusion whose docstring cites an equation or algorithm is linked from a note
    (at its def line, which test_links_land_on_their_def_lines checks)."""
    linked = linked_lines()
    missing = [f"{p.relative_to(ROOT)}: {q} (line {n})" for p in sorted(DIFFUSION.glob("*.py"))
               for q, n in citing_functions(p).items() if (p.resolve(), n) not in linked]
    assert not missing, ("functions that implement a cited equation or algorithm but no note links to them "
                         f"(add a link after the equation in notes/, or {FIX} if they moved):\n" + "\n".join(missing))


# ---------------------------------------------------------------------- (c) the notes and their sections
def sections(text: str) -> dict[str, str]:
    """{heading: body up to the next heading of the same or a higher level} for every heading."""
    heads = [(m.start(), len(m.group(1)), m.group(2).strip()) for m in re.finditer(r"^(#{1,6}) +(.+)$", text, re.M)]
    out = {}
    for i, (start, level, title) in enumerate(heads):
        end = next((s for s, lv, _ in heads[i + 1:] if lv <= level), len(text))
        out[title] = text[start:end]
    return out


def section(text: str, pattern: str) -> str:
    hits = [body for title, body in sections(text).items() if re.search(pattern, title, re.I)]
    return hits[0] if hits else ""


OWN_DATA = {  # what "For your own data" must cover: topic -> pattern
    "resolution": r"resolution", "pixel or latent": r"pixel.*latent|latent.*pixel", "autoencoder": r"autoencoder",
    "schedule": r"schedule", "prediction": r"prediction", "sampler": r"sampler", "number of steps": r"steps",
    "reading the loss curve": r"loss curve",
}
FAILURES = {  # what the failure-modes section must cover: failure -> pattern
    "samples that stay noise": r"stays? noise", "colour shifts": r"colou?r shifts?",
    "a conditional model that ignores its condition": r"ignores? (its|the) condition",
    "a latent model blurred by its autoencoder": r"blurred by (its|the) autoencoder", "usual causes": r"usual causes",
}


def test_the_notes_exist():
    names = [p.name for p in NOTES]
    for prefix, (name, _) in EXPECTED.items():
        assert name in names, f"notes/{name} is missing (notes/ holds {names})"
    assert len([n for n in names if re.match(r"0[1-5]b?_", n)]) == len(EXPECTED), names


@pytest.mark.parametrize("prefix", sorted(EXPECTED))
def test_note_links_its_notebook(prefix):
    """Each note names its notebook at the top (the first 15 lines)."""
    name, notebook = EXPECTED[prefix]
    head = "\n".join((NOTES_DIR / name).read_text().splitlines()[:15])
    assert f"(../notebooks/{notebook})" in head, f"{name}: link ../notebooks/{notebook} at the top"


def test_note_01_points_to_dff_explore():
    assert "dff explore" in (NOTES_DIR / EXPECTED["01"][0]).read_text()


def missing_topics(text: str) -> list[str]:
    own, fail = section(text, r"for your own data"), section(text, r"failure modes")
    out = [] if own else ["a section titled 'For your own data'"]
    out += [f"'For your own data' on {k}" for k, pat in OWN_DATA.items()
            if own and not re.search(pat, own, re.I | re.S)]
    out += [] if fail else ["a section on failure modes"]
    out += [f"failure modes: {k}" for k, pat in FAILURES.items() if fail and not re.search(pat, fail, re.I)]
    return out


@pytest.mark.parametrize("prefix", sorted(EXPECTED))
def test_note_has_own_data_and_failure_sections(prefix):
    name = EXPECTED[prefix][0]
    missing = missing_topics((NOTES_DIR / name).read_text())
    assert not missing, f"{name} lacks: {missing}"


def test_section_check_catches_a_missing_topic():
    text = ("# T\n## For your own data\nresolution, pixel or latent, schedule\n"
            "## Failure modes\nsamples stay noise; colorization\n")
    assert "'For your own data' on autoencoder" in missing_topics(text)
    assert "failure modes: colour shifts" in missing_topics(text)


@pytest.mark.parametrize("prefix", sorted(EXPECTED))
def test_note_length_is_readable(prefix):
    n = len((NOTES_DIR / EXPECTED[prefix][0]).read_text().splitlines())
    assert 120 <= n <= 330, f"{EXPECTED[prefix][0]}: {n} lines (aim for 150-300)"


# ---------------------------------------------------------------------- (d) math that GitHub renders
def math_problems(text: str) -> list[str]:
    """Unclosed ```math or other fences, an odd number of `$$` lines, and lines of prose with an odd
    number of inline `$` (after code spans and escaped dollars are removed)."""
    out, fence, dollars = [], None, 0
    for i, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if fence is not None:
            if s == "```":
                fence = None
            continue
        if s.startswith("```"):
            fence = i
            continue
        if s == "$$":
            dollars += 1
            continue
        if dollars % 2:  # inside a $$ block
            continue
        prose = re.sub(r"`[^`]*`", "", line).replace(r"\$", "")
        if prose.count("$") % 2:
            out.append(f"line {i}: odd number of inline $: {s[:60]!r}")
        elif any(m != m.strip() for m in re.findall(r"\$([^$]+)\$", prose)):
            out.append(f"line {i}: inline math with a space inside its $ (GitHub shows it as text): {s[:60]!r}")
    if fence is not None:
        out.append(f"fence opened on line {fence} is never closed")
    if dollars % 2:
        out.append(f"odd number of $$ lines ({dollars})")
    return out


@pytest.mark.parametrize("note", NOTES, ids=lambda p: p.name)
def test_math_is_balanced(note):
    problems = math_problems(note.read_text())
    assert not problems, f"{note.name}: math that GitHub would not render:\n" + "\n".join(problems)


def test_math_check_catches_unbalanced_math():
    assert math_problems("```math\nx = 1\n")
    assert math_problems("$$\nx\n")
    assert math_problems("the noise $\\epsilon is drawn\n")
    assert math_problems("$c' = $ the code\n")
    assert not math_problems("$x$ and `$` and\n```math\ny\n```\n$$\nz\n$$\n")


# ---------------------------------------------------------------------- named files exist
PATH = re.compile(r"(?<![\w/.])((?:configs|benchmarks|docs|scripts|src/dff|tests|notebooks|notes)/[\w./-]+\w)")


@pytest.mark.parametrize("note", NOTES, ids=lambda p: p.name)
def test_named_files_exist(note):
    text = note.read_text()
    named = set(PATH.findall(text)) | {str((note.parent / m).resolve().relative_to(ROOT))
                                       for m in re.findall(r"\]\((\.\./[^)#\s]+)", text)
                                       if (note.parent / m).resolve().is_relative_to(ROOT)}
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{note.name} names files that do not exist: {missing}"


# ---------------------------------------------------------------------- tables render
def table_problems(text: str) -> list[str]:
    """Tables (runs of lines starting with '|' outside fences) without a separator row, or with rows of
    another number of cells than the header (a '|' inside inline math splits a cell)."""
    out, block, fence = [], [], False
    for line in text.splitlines() + [""]:
        if line.strip().startswith("```"):
            fence = not fence
        if line.startswith("|") and not fence:
            block.append(line)
            continue
        if block:
            n = len(re.split(r"(?<!\\)\|", block[0].strip().strip("|")))
            if len(block) < 2 or not re.fullmatch(r"\|( *:?-+:? *\|)+", block[1].strip()):
                out.append(f"table without a separator row: {block[0][:60]!r}")
            out += [f"row of another width than its header: {row[:60]!r}" for row in block
                    if len(re.split(r"(?<!\\)\|", row.strip().strip("|"))) != n]
            block = []
    return out


@pytest.mark.parametrize("note", NOTES, ids=lambda p: p.name)
def test_every_table_renders(note):
    problems = table_problems(note.read_text())
    assert not problems, f"{note.name}:\n" + "\n".join(problems)


def test_table_check_catches_a_split_row():
    assert table_problems("| a | b |\n| --- | --- |\n| $\\lvert x | y$ | 2 |\n")
    assert not table_problems("| a | b |\n| --- | --- |\n| 1 | 2 |\n")
