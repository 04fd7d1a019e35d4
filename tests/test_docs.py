"""The docs tell the truth where a program can check it: config keys and defaults quoted in the README
exist and match the code, the README's config example is the shipped file, every table renders, every
repository file and Python name the docs mention exists, and the import layers in
docs/architecture.md are the ones the code has."""
from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SRC = ROOT / "src" / "dff"


def doc_text(path: Path) -> str:
    return path.read_text()


def config_sections() -> dict[str, type]:
    """The top-level keys of a `dff fit` config and the class whose constructor takes their keys."""
    from lightning import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    from dff.data import ImageDataModule
    from dff.training.callbacks import SampleGrid
    from dff.training.module import DiffusionModule
    from dff.training.posthoc_ema import PostHocEMA
    from dff.training.speed import Speed

    return {"model": DiffusionModule, "data": ImageDataModule, "trainer": Trainer, "checkpoint": ModelCheckpoint,
            "samples": SampleGrid, "posthoc_ema": PostHocEMA, "speed": Speed}


def parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The keys of cls's config section: its constructor's arguments; the training shell's `**model` are
    DiffusionModel's (jsonargparse follows them there)."""
    from dff.models import DiffusionModel

    params = dict(inspect.signature(cls.__init__).parameters)
    if params.get("model") and params["model"].kind is inspect.Parameter.VAR_KEYWORD:
        del params["model"]
        params.update(inspect.signature(DiffusionModel.__init__).parameters)
    return params


# ---------------------------------------------------------------------- config keys and defaults
KEY = re.compile(r"`-{0,2}(model|data|trainer|checkpoint|samples|posthoc_ema|speed)\."
                 r"(?!(?:png|safetensors|yaml|json|ckpt|csv|py)`)(\w+)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_quoted_config_keys_exist(doc):
    sections = config_sections()
    unknown = [f"{s}.{k}" for s, k in KEY.findall(doc_text(doc)) if k not in parameters(sections[s])]
    assert not unknown, f"{doc.name} quotes config keys the code does not have: {unknown}"


def literal(text: str):
    return yaml.safe_load(text)


def test_quoted_defaults_match_the_code():
    """'`model.K: V` (default)' and '(`model.K`, default V)' in the README state the constructor's default."""
    text, sections = doc_text(ROOT / "README.md"), config_sections()
    claims = re.findall(r"`(model|data)\.(\w+): ([^`|]+)` \(default[;)]", text)
    claims += re.findall(r"`(model|data)\.(\w+)`, default ([\w.]+)", text)
    assert len(claims) >= 2  # the README states some defaults; this test reads them
    for section, key, value in claims:
        default = parameters(sections[section])[key].default
        assert literal(value) == default, f"README: {section}.{key} defaults to {value}, the code to {default!r}"


def test_readme_config_example_is_the_shipped_config():
    """The YAML example under 'Train on your own images' shows configs/pixel_64.yaml's values."""
    text = doc_text(ROOT / "README.md")
    block = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    example = yaml.safe_load(block)
    shipped = yaml.safe_load((ROOT / "configs" / "pixel_64.yaml").read_text())
    for section, values in example.items():
        for key, value in values.items():
            assert key in parameters(config_sections()[section]), f"{section}.{key}"
            assert shipped[section].get(key, parameters(config_sections()[section])[key].default) == value, \
                f"README's example has {section}.{key}: {value!r}, configs/pixel_64.yaml {shipped[section].get(key)!r}"


# ---------------------------------------------------------------------- tables
def tables(text: str) -> list[list[str]]:
    """Blocks of consecutive lines that start with '|' (outside code blocks)."""
    out, block, in_code = [], [], False
    for line in text.splitlines() + [""]:
        if line.startswith("```"):
            in_code = not in_code
        if line.startswith("|") and not in_code:
            block.append(line)
        elif block:
            out.append(block)
            block = []
    return out


def cells(row: str) -> int:
    return len(re.split(r"(?<!\\)\|", row.strip().strip("|")))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_table_renders(doc):
    """Each table has a header and a separator row, and every row the header's number of cells
    (a table split by a blank line loses its header and renders as text)."""
    for block in tables(doc_text(doc)):
        assert len(block) >= 2 and re.fullmatch(r"\|( *:?-+:? *\|)+", block[1].strip()), \
            f"{doc.name}: table without a header separator, starting {block[0][:60]!r}"
        n = cells(block[0])
        bad = [row[:60] for row in block if cells(row) != n]
        assert not bad, f"{doc.name}: rows with another number of cells than the header's {n}: {bad}"


def test_table_check_catches_a_split_table():
    split = "| a | b |\n| --- | --- |\n| 1 | 2 |\n\n| 3 | 4 |\n"
    with pytest.raises(AssertionError):
        for block in tables(split):
            assert len(block) >= 2 and re.fullmatch(r"\|( *:?-+:? *\|)+", block[1].strip())


# ---------------------------------------------------------------------- files and names
PATH = re.compile(r"(?<![\w/.])((?:configs|benchmarks|docs|scripts|src/dff|tests|notebooks|notes|\.ci)/[\w./-]+\w)")
NAME = re.compile(r"`(dff(?:\.\w+)+)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_files_exist(doc):
    missing = sorted({p for p in PATH.findall(doc_text(doc)) if not (ROOT / p).exists()})
    assert not missing, f"{doc.name} names files that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_python_names_exist(doc):
    """`dff.module.PixelDiffusion`, `dff.diffusion.ddim`, ...: each resolves to a module or an attribute."""
    missing = []
    for name in sorted(set(NAME.findall(doc_text(doc)))):
        parts = name.split(".")
        for i in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(name)
            break
        else:
            missing.append(name)
    assert not missing, f"{doc.name} names Python objects that do not exist: {missing}"


# ---------------------------------------------------------------------- layers
def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def internal_imports(path: Path) -> set[str]:
    """The dff modules a file imports (at any depth: deferred imports count too)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("dff"):
                # `from .x import y` may import a submodule y
                for alias in node.names:
                    sub = f"{mod}.{alias.name}"
                    found.add(sub if (SRC.parent / Path(*sub.split("."))).with_suffix(".py").exists() else mod)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dff")}
    return found - {me}


def documented_floors() -> dict[str, int]:
    """'floor N' of each file or folder in docs/architecture.md's layout block."""
    text = doc_text(ROOT / "docs" / "architecture.md")
    layout = re.search(r"```\nsrc/dff/\n(.*?)```", text, re.S).group(1)
    floors = {}
    for line in layout.splitlines():
        m = re.match(r"  (\S+)\s+floor (\d)", line)
        if m:
            name, floor = m.group(1), int(m.group(2))
            floors["dff." + name.rstrip("/").removesuffix(".py")] = floor
    return floors


def floor_of(module: str, floors: dict[str, int]) -> int:
    """A module's floor: its own entry, else its folder's."""
    name = module
    while name not in floors:
        assert "." in name, f"{module} is on no floor of docs/architecture.md's layout"
        name = name.rsplit(".", 1)[0]
    return floors[name]


def test_architecture_layers_match_the_imports():
    """Every file sits on a floor of docs/architecture.md; a module imports only from floors below its own
    (or, inside one folder of floor 1, from its own folder), and the diffusion math imports no Lightning
    and no network."""
    floors = documented_floors()
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        me = module_name(path)
        if me == "dff":  # the package's public names are imported lazily from every floor
            continue
        mine = floor_of(me, floors)
        folder = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
        for dep in internal_imports(path):
            if dep == "dff":
                continue
            theirs = floor_of(dep, floors)
            same_folder = folder != "dff" and (dep == folder or dep.rsplit(".", 1)[0] == folder)
            if theirs >= mine and not same_folder:
                wrong.append(f"{me} (floor {mine}) imports {dep} (floor {theirs})")
    assert not wrong, "docs/architecture.md's floors disagree with the imports:\n" + "\n".join(wrong)
    for path in (SRC / "diffusion").glob("*.py"):
        text = path.read_text()
        assert "lightning" not in text and "from ..nn" not in text and "import dff.nn" not in text, path


# ---------------------------------------------------------------------- the README's Python example
def test_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's Python block, run as written (training shortened to 20 steps, its run folder in a
    temporary directory): it trains, samples 16 digits-shaped images and drives DDIM with the exact
    denoiser of N(0, 0.25 I) data, whose samples have std 0.5."""
    text = doc_text(ROOT / "README.md")
    code = re.search(r"## Python\n\n```python\n(.*?)```", text, re.S).group(1)
    short = code.replace('"--trainer.max_steps", "200"]',
                         f'"--trainer.max_steps", "20", "--trainer.default_root_dir", {str(tmp_path)!r}]')
    assert short != code
    monkeypatch.chdir(ROOT)  # the example's config path is relative to the repository
    scope: dict = {}
    exec(compile(short, "README.md", "exec"), scope)
    assert scope["images"].shape == (16, 1, 16, 16)
    assert type(scope["model"]).__name__ == "DiffusionModel"  # load_pretrained gives the plain model
    assert scope["digits"].shape == (8, 1, 16, 16) and int(scope["plain"].ema.num_updates) == 20
    assert float(scope["x0"].std()) == pytest.approx(0.5, abs=0.03)


# ---------------------------------------------------------------------- the linter
def test_the_code_is_clean_under_the_linter():
    """ruff with the project's rules (pyproject.toml: line length 120, pycodestyle errors and warnings, pyflakes)
    finds nothing in src, tests, benchmarks, scripts and the notebooks' sources."""
    import subprocess
    import sys

    folders = ["src", "tests", "benchmarks", "scripts", "notebooks"]
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *folders], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
