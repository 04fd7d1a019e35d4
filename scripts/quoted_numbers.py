"""Every measured number the course and the README quote comes from a result file in the repository.

A quoted measurement carries a marker right after it, invisible once rendered (an HTML comment, which GitHub and
Jupyter both hide):

    DDIM scores 3.97<!-- n: notebooks/results/02_pixel.json values.fid_ddim_10 --> at 10 steps
    28.56, 29.35 dB<!-- n: benchmarks/results/x.json rows.0.psnr rows.1.psnr -->
    took 3.5 min<!-- n: notebooks/results/02_pixel.json wall_s/60 -->, 82.4%<!-- n: F values.share*100 -->

A marker names a JSON file (relative to the repository root) and one key path per number (dots, list indices as
integers; `*k` or `/k` scales the value, `A/@B` divides two values of the file); its keys are matched, in order, to
the last numbers written before it (since the previous marker). A quoted number must equal its value rounded to
the decimals it is written with.

Which numbers are measurements: those written with a unit of time, speed, size or a ratio (s, min, %, dB, x1.88,
images/s, GB, ...) or after the name of a score (FID, KID, PSNR, SSIM, TV, accuracy). Each of those must be claimed
by a marker, or be listed in NOT_MEASURED with why (a setting, a closed-form value, a factor of the data).

    python scripts/quoted_numbers.py          # every unsourced or mismatched number, with its file and line
    python scripts/quoted_numbers.py --fill   # rewrite each marked number from its source, at the decimals it has
                                              # (after a rerun: then read the sentences again, they may have turned)
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!--\s*n:\s*(\S+)((?:\s+[^\s>]+)+?)\s*-->")
NUMBER = re.compile(r"(?:(?<![\w.\-/])|(?<=\bx)|(?<=×))[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w.]*\d)")
UNIT = (r"\s?(?:%|dB\b|ms\b|s\b|min\b|minutes\b|seconds\b|hours?\b|h\b|images/s\b|samples/s\b|steps/s\b|GB\b|"
        r"GiB\b|MB\b|GFLOP/s\b)")
MEASURED = re.compile(
    r"(?<![\w.\-/])(?P<a>[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)" + UNIT  # 23 min, 80.9%, 28.7 dB
    + r"|(?<![\w.])[x×](?P<b>\d+\.\d+)\b"  # x1.88 (a ratio)
    + r"|(?<![\w.\-/])(?P<c>\d+\.\d+)[x×](?!\w)"  # 1.4x (a ratio)
    + r"|\b(?:FID|KID|PSNR|SSIM|TV|accuracy)\b[^\d\n.;:(]{0,12}(?P<d>[-−]?\d+\.\d+)")  # FID 1.52, TV ≈ 0.03
# Numbers that look measured but are not: (file, the text around it) -> why
NOT_MEASURED: dict[tuple[str, str], str] = {
    ("01_diffusion_process.md", "evenly from $10^{-4}$ to $0.02$"): "the linear schedule's definition",
    ("01_diffusion_process.md", "to $\\sqrt{0.02}$"): "the quadratic schedule's definition",
    ("01_diffusion_process.md", "(0.02 - 10^{-4}"): "the sigmoid schedule's definition",
    ("01_diffusion_process.md", "clipped at 0.999"): "the cosine schedule's definition",
    ("01_diffusion_process.md", "`offset_noise` 0.1"): "a setting",
    ("02_pixel_diffusion.md", "$\\bar\\alpha_T = 2.4"): "closed form (the cosine schedule)",
    ("02_pixel_diffusion.md", "`model.offset_noise` 0.1"): "a setting",
    ("03_conditional_pixel_diffusion.md", "luma $0.299R"): "the ITU-R BT.601 coefficients",
    ("03_conditional_pixel_diffusion.md", "chance is 10%"): "closed form (ten classes)",
    ("04_latent_diffusion.md", "reconstruction below 20 dB"): "dff doctor's threshold, a setting",
    ("README.md", "0.94 GB for the 5"): "closed form: 58.6 M parameters x 4 copies x 4 bytes",
    ("README.md", "the 0.1th and 99.9th"): "a setting (the percentiles)",
    ("README.md", "against its ~10 hours"): "the original project's own figure (its README)",
    ("README.md", "`data.device_max_gb`, 4 GB"): "a setting (the default)",
    ("README.md", "(the original hard-coded 0.1)"): "the original project's setting",
    ("README.md", "latents x 0.1)"): "the original project's setting",
}


def sources() -> list[Path]:
    """The files whose quoted numbers are checked: the notes, the notebooks (their markdown), both READMEs."""
    return (sorted((ROOT / "notes").glob("*.md")) + [ROOT / "README.md", ROOT / "notebooks" / "README.md"]
            + sorted((ROOT / "notebooks").glob("0*_*.py")))


def prose(path: Path) -> str:
    """The text a reader reads: a markdown file whole; of a notebook (jupytext percent format), its markdown cells
    (comment lines under `# %% [markdown]`), other lines blanked so that line numbers stay those of the file."""
    text = path.read_text()
    if path.suffix != ".py":
        return text
    out, in_md = [], False
    for line in text.splitlines():
        if line.startswith("# %%"):
            in_md = "[markdown]" in line
            out.append("")
        else:
            out.append(line[2:] if in_md and line.startswith("# ") else "")
    return "\n".join(out)


def lookup(data, key: str) -> float:
    """data[key] for a dotted key path (list indices as integers), scaled by a trailing *k or /k; `A/@B` is the
    ratio of two values of the file (a speed-up)."""
    if "/@" in key:
        a, b = key.split("/@")
        return lookup(data, a) / lookup(data, b)
    m = re.fullmatch(r"(.+?)(?:([*/])([\d.]+))?", key)
    path, op, k = m.group(1), m.group(2), m.group(3)
    v, parts, i = data, path.split("."), 0
    while i < len(parts):
        if isinstance(v, list):
            v, i = v[int(parts[i])], i + 1
            continue
        # the longest run of parts that is a key: a key may hold dots ("guidance_1.5_fid")
        j = next((j for j in range(len(parts), i, -1) if isinstance(v, dict) and ".".join(parts[i:j]) in v), None)
        if j is None:
            raise KeyError(f"no {parts[i]!r} in {path!r}")
        v, i = v[".".join(parts[i:j])], j
    v = float(v)
    return v * float(k) if op == "*" else v / float(k) if op == "/" else v


def as_float(quoted: str) -> tuple[float, int]:
    """'2,820' -> (2820.0, 0); '-0.007' -> (-0.007, 3): the value and its decimals."""
    q = quoted.replace(",", "").replace("−", "-")
    return float(q), len(q.split(".")[1]) if "." in q else 0


@dataclass
class Problem:
    path: Path
    line: int
    what: str

    def __str__(self) -> str:
        shown = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{shown}:{self.line}: {self.what}"


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def claims(text: str) -> Iterator[tuple[re.Match, str, list[str], list[re.Match], object]]:
    """Each marker of `text` with its file, its keys, the numbers it claims (the last len(keys) before it, since the
    previous marker) and the file's parsed JSON (or the exception reading it raised; each file read once)."""
    cache: dict[str, object] = {}
    last_end = 0
    for m in MARKER.finditer(text):
        file, keys = m.group(1), m.group(2).split()
        numbers = [n for n in NUMBER.finditer(text, last_end, m.start())][-len(keys):]
        last_end = m.end()
        if file not in cache:
            try:
                cache[file] = json.loads((ROOT / file).read_text())
            except (OSError, ValueError) as e:
                cache[file] = e
        yield m, file, keys, numbers, cache[file]


def check_file(path: Path) -> tuple[list[Problem], int]:
    """(the problems of one file, the number of numbers its markers claim)."""
    text, problems, claimed = prose(path), [], set()
    for m, file, keys, numbers, data in claims(text):
        where = line_of(text, m.start())
        if len(numbers) < len(keys):
            problems.append(Problem(path, where, f"marker names {len(keys)} values, {len(numbers)} numbers before it"))
            continue
        for n, key in zip(numbers, keys):
            claimed.add(n.start())
            if isinstance(data, Exception):
                problems.append(Problem(path, where, f"{file}: cannot be read ({data})"))
                continue
            try:
                v = lookup(data, key)
            except (KeyError, IndexError, ValueError, TypeError) as e:
                problems.append(Problem(path, where, f"{file}: {key}: {e.args[0] if e.args else e}"))
                continue
            q, decimals = as_float(n.group())
            if abs(round(v, decimals) - q) > 0.5 * 10 ** -decimals + 1e-9:
                problems.append(Problem(path, where, f"quotes {n.group()} for {file} {key} = {v:.6g} "
                                                     f"(rounded to {decimals} decimals: {round(v, decimals)})"))
    flagged = [(m.start(g), m.group(g), m.start(), m.end()) for m in MEASURED.finditer(text)
               for g in [next(k for k in "abcd" if m.group(k) is not None)]]
    for row in re.finditer(r"^\|.*\|[ \t]*$", text, re.MULTILINE):  # a table's decimals are measurements too
        flagged += [(n.start(), n.group(), n.start(), n.end()) for n in NUMBER.finditer(text, row.start(), row.end())
                    if "." in n.group()]
    for start, number, m_start, m_end in sorted(set(flagged)):
        if start in claimed:
            continue
        around = text[max(0, m_start - 30):m_end + 10].replace("\n", " ")
        if any(path.name == f and snippet in text[max(0, start - 80):start + 80] for f, snippet in NOT_MEASURED):
            continue
        problems.append(Problem(path, line_of(text, start), f"{number} has no source: ...{around}..."))
    return problems, len(claimed)


def check_all() -> tuple[list[Problem], int]:
    problems, claimed = [], 0
    for path in sources():
        p, c = check_file(path)
        problems += p
        claimed += c
    return problems, claimed


def iter_markers() -> Iterator[tuple[Path, str]]:
    for path in sources():
        for m in MARKER.finditer(prose(path)):
            yield path, m.group(1)


def fill(path: Path) -> int:
    """Rewrite the numbers claimed by markers in `path` from their sources, each at the decimals it is written with;
    the number of numbers changed."""
    text, raw = prose(path), path.read_text()
    raw_lines, prose_lines = raw.splitlines(keepends=True), text.split("\n")
    starts = [0]
    for line in raw_lines:
        starts.append(starts[-1] + len(line))

    def to_raw(i: int) -> int:  # a position in prose() -> in the file (a notebook's markdown lines lose "# " there)
        row = text.count("\n", 0, i)
        col = i - (text.rfind("\n", 0, i) + 1)
        shift = 2 if path.suffix == ".py" and prose_lines[row] and raw_lines[row].startswith("# ") else 0
        return starts[row] + shift + col

    edits = []
    for _, _, keys, numbers, data in claims(text):
        if isinstance(data, Exception):
            continue  # check_file names it
        for n, key in zip(numbers, keys):
            _, decimals = as_float(n.group())
            v = round(lookup(data, key), decimals)
            new = f"{v:,.{decimals}f}" if "," in n.group() else f"{v:.{decimals}f}"
            if new != n.group():
                edits.append((to_raw(n.start()), to_raw(n.end()), new))
    for a, b, new in sorted(edits, reverse=True):
        raw = raw[:a] + new + raw[b:]
    path.write_text(raw)
    return len(edits)


if __name__ == "__main__":
    if "--fill" in sys.argv:
        for path in sources():
            if (changed := fill(path)):
                print(f"{path.relative_to(ROOT)}: {changed} number(s) rewritten from their sources")
    found, n = check_all()
    for p in found:
        print(p)
    print(f"{n} quoted numbers sourced, {len(found)} problem(s)")
    sys.exit(1 if found else 0)
