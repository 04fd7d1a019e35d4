"""The course notebooks (notebooks/0*_*.py, jupytext's percent format, paired with .ipynb files):
each pair agrees, the .ipynb files hold no outputs, every notebook runs top to bottom in quick mode
(DFF_QUICK=1) with its exercises filled in from notebooks/solutions/ and draws its figures, the
exercise checks reject wrong answers with a message naming the case, and a notebook run without the
`learn` extra says what to install."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from dff.tools import learn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*_*.py"))
SOLUTIONS = ROOT / "notebooks" / "solutions"
MIN_FIGURES = {  # image/png outputs each notebook draws at least; a notebook not listed here: 1
    "01_sandbox": 6,
    "02_pixel": 8,
    "03_conditional_pixel": 5,
    "04_latent": 5,
    "05_conditional_latent": 4,
}
EXERCISE_LINE = re.compile(r"# Exercise (\w+):")
SOLUTION_LINE = re.compile(r"^# %% exercise (\w+)\s*$", re.MULTILINE)


def names(paths):
    return [p.stem for p in paths]


def test_notebooks_are_found():
    assert NOTEBOOKS, "no notebooks/0*_*.py found"


# ---------------------------------------------------------------------- the pairs
def code_and_markdown(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("py", NOTEBOOKS, ids=names(NOTEBOOKS))
def test_py_and_ipynb_agree(py: Path):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing: run jupytext --sync notebooks/{py.name}"
    assert code_and_markdown(jupytext.read(py)) == code_and_markdown(jupytext.read(ipynb)), \
        f"{py.name} and {ipynb.name} differ: run jupytext --sync notebooks/{py.name}"


@pytest.mark.parametrize("py", NOTEBOOKS, ids=names(NOTEBOOKS))
def test_ipynb_is_stored_without_outputs(py: Path):
    nb = nbformat.read(py.with_suffix(".ipynb"), as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, (f"{py.with_suffix('.ipynb').name}: cells {dirty} hold outputs or execution counts; "
                       f"clear them (jupytext --to ipynb notebooks/{py.name} rewrites it from the .py)")


# ---------------------------------------------------------------------- exercises and their solutions
def solutions_of(py: Path) -> dict[str, str]:
    """{name: cell source} from notebooks/solutions/<notebook>.py, blocks headed `# %% exercise NAME`."""
    path = SOLUTIONS / py.name
    if not path.exists():
        return {}
    parts = SOLUTION_LINE.split(path.read_text())
    return {name: body.strip() + "\n" for name, body in zip(parts[1::2], parts[2::2])}


def exercise_cells(nb) -> list[tuple[int, str]]:
    """(index, name) of the cells tagged "exercise"; the name comes from their `# Exercise NAME:` line."""
    out = []
    for i, c in enumerate(nb.cells):
        if "exercise" in c.metadata.get("tags", []):
            m = EXERCISE_LINE.match(c.source)
            assert m, f"exercise cell {i} must start with a line '# Exercise NAME: ...'"
            out.append((i, m.group(1)))
    return out


def with_solutions(py: Path):
    """The notebook with every exercise cell replaced by its solution."""
    nb = jupytext.read(py)
    solutions = solutions_of(py)
    cells = exercise_cells(nb)
    missing = [name for _, name in cells if name not in solutions]
    assert not missing, f"{py.name}: no solution for exercises {missing} in notebooks/solutions/{py.name}"
    unused = set(solutions) - {name for _, name in cells}
    assert not unused, f"notebooks/solutions/{py.name} solves exercises the notebook does not have: {sorted(unused)}"
    for i, name in cells:
        nb.cells[i].source = solutions[name]
    return nb


@pytest.mark.parametrize("py", NOTEBOOKS, ids=names(NOTEBOOKS))
def test_exercise_stubs_are_stubs(py: Path):
    """Each exercise cell, as shipped, leaves the work to the learner (its check would fail)."""
    for i, name in exercise_cells(jupytext.read(py)):
        assert "NotImplementedError" in jupytext.read(py).cells[i].source, f"{py.name}: exercise {name} is not a stub"


def test_02_has_an_exercise():
    assert exercise_cells(jupytext.read(ROOT / "notebooks" / "02_pixel.py"))


# ---------------------------------------------------------------------- the checks reject wrong answers
def q_sample_one_t(x0, t, eps, alpha_bar):  # uses the first sample's t for the whole batch
    ab = alpha_bar[t[0]].float()
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def q_sample_no_sqrt(x0, t, eps, alpha_bar):
    ab = alpha_bar[t].float().reshape(-1, *[1] * (x0.dim() - 1))
    return ab * x0 + (1 - ab) * eps


def q_sample_images_only(x0, t, eps, alpha_bar):  # broadcasts only against (B, C, H, W)
    ab = alpha_bar[t].float()[:, None, None, None]
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def stub(*args):
    raise NotImplementedError


@pytest.mark.parametrize("check, wrong, message", [
    (learn.check_q_sample, q_sample_one_t,
     r"case 'a different t for each sample.*expected .* got .*largest difference"),
    (learn.check_q_sample, q_sample_no_sqrt, r"case 't = 0 for every sample.*expected .* got"),
    (learn.check_q_sample, q_sample_images_only, r"case 'vectors \(B, D\).*expected shape \(3, 5\), got shape"),
    (learn.check_v_target, lambda x0, eps, a, s: s * x0 - a * eps, r"case 'nearly clean.*expected .* got"),
    (learn.check_v_target, lambda x0, eps, a, s: s * eps - a * x0, r"case 'nearly clean.*expected .* got"),
    (learn.check_v_target, lambda x0, eps, a, s: float(a.mean()), r"expected a tensor"),
    (learn.check_psnr, lambda x, y: 10 * torch.log10(1 / ((x - y) ** 2).mean()),
     r"case 'a batch whose images have different errors.*expected .* got"),
    (learn.check_psnr, lambda x, y: 10 * torch.log10(1 / ((x - y) ** 2).mean((1, 2, 3))),
     r"case 'one grayscale image': expected shape \(\), got shape \(1,\)"),
    (learn.check_latent_scale, lambda z: 1 / z.pow(2).mean().sqrt(),
     r"case 'latents with a mean of 3.*expected .* got"),
    (learn.check_latent_scale, lambda z: z.std(), r"case 'centred latents of std 4.*expected .* got"),
])
def test_checks_reject_wrong_answers_naming_the_case(check, wrong, message):
    with pytest.raises(AssertionError, match=message):
        check(wrong)


def test_checks_accept_the_solutions_and_hand_them_back():
    ns: dict = {}
    for source in solutions_of(ROOT / "notebooks" / "02_pixel.py").values():
        exec(source, ns)
    assert learn.check_q_sample(ns["q_sample_by_hand"]) is ns["q_sample_by_hand"]
    assert learn.check_v_target(ns["v_target"]) is ns["v_target"]
    from dff.metrics import psnr
    assert learn.check_psnr(psnr) is psnr
    mine = lambda z: 1 / z.std()  # noqa: E731
    assert learn.check_latent_scale(mine) is mine


@pytest.mark.parametrize("check", [learn.check_q_sample, learn.check_v_target, learn.check_psnr,
                                   learn.check_latent_scale, learn.check_posterior_mean])
def test_an_exercise_not_written_yet_says_so_and_the_library_goes_on(check, capsys):
    """Run All as shipped: a stub gives one line and the library's version, which passes the same check."""
    library = check(stub)
    assert library is not stub
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "not written yet, so the notebook goes on with the library's version" in out
    assert check(library) is library and "correct on all" in capsys.readouterr().out


# ---------------------------------------------------------------------- quick mode and the learn extra
def test_quick_mode_reads_DFF_QUICK(monkeypatch):
    for value, expected in (("1", True), ("true", True), ("0", False), ("", False)):
        monkeypatch.setenv("DFF_QUICK", value)
        assert learn.quick() is expected and learn.budget(1000, 10) == (10 if expected else 1000)
    monkeypatch.delenv("DFF_QUICK")
    assert not learn.quick()


def test_require_names_the_install_command():
    with pytest.raises(ModuleNotFoundError, match=re.escape('pip install "diffusion-fast-forward[learn]"')) as e:
        learn.require("torch", "no_such_module_xyz")
    assert "no_such_module_xyz" in str(e.value) and "torch," not in str(e.value)
    learn.require("torch")  # present: nothing raised


@pytest.mark.parametrize("py", NOTEBOOKS, ids=names(NOTEBOOKS))
def test_notebook_without_the_learn_extra_says_what_to_install(py: Path, tmp_path):
    """The first code cell, run where jupytext and ipykernel cannot be imported, stops with the install command."""
    first = next(c.source for c in jupytext.read(py).cells
                 if c.cell_type == "code" and "install" not in c.metadata.get("tags", []))
    block = "import sys\nsys.modules['jupytext'] = None\nsys.modules['ipykernel'] = None\n"
    r = subprocess.run([sys.executable, "-c", block + first], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "DFF_QUICK": "1", "MPLBACKEND": "Agg"})
    assert r.returncode != 0, f"{py.name}'s first cell ran without the learn extra"
    assert 'pip install "diffusion-fast-forward[learn]"' in r.stderr, r.stderr[-2000:]
    assert "ipykernel" in r.stderr and "jupytext" in r.stderr


def install_cell(py: Path) -> str:
    return next(c.source for c in jupytext.read(py).cells if "install" in c.metadata.get("tags", []))


def test_the_install_cell_is_first_and_the_same_in_every_notebook():
    for py in NOTEBOOKS:
        first = next(c for c in jupytext.read(py).cells if c.cell_type == "code")
        assert "install" in first.metadata.get("tags", []) and first.source == install_cell(NOTEBOOKS[0]), py.name


def test_the_install_cell_does_nothing_where_dff_imports_and_installs_it_where_not(monkeypatch):
    """Colab: the first cell pip-installs dff (DFF_SOURCE: the index's name, a clone URL, a folder or a wheel)
    only when dff cannot be imported."""
    import importlib.util

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    exec(install_cell(NOTEBOOKS[0]), {})
    assert calls == []  # dff imports here: nothing installed
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "dff" else find_spec(name, *a))
    for source, spec in ((None, "diffusion-fast-forward[learn]"),
                         ("git+https://example.org/dff.git", "diffusion-fast-forward[learn] @ git+https://example.org/dff.git"),
                         ("/content/dff", "/content/dff[learn]")):
        if source is None:
            monkeypatch.delenv("DFF_SOURCE", raising=False)
        else:
            monkeypatch.setenv("DFF_SOURCE", source)
        calls.clear()
        exec(install_cell(NOTEBOOKS[0]), {})
        assert calls == [[sys.executable, "-m", "pip", "install", "--quiet", spec]]


# ---------------------------------------------------------------------- running them
def run_notebook(nb, cwd: Path, timeout: int = 600):
    """Execute nb in a python3 kernel started by this interpreter, in cwd, with DFF_QUICK=1 and
    matplotlib's inline backend; returns the executed notebook."""
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout,
                                     resources={"metadata": {"path": str(cwd)}})
    return client.execute()


def kernel_python(tmp_path) -> str:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")])
    return run_notebook(nb, tmp_path, timeout=120).cells[0].outputs[0]["text"].strip()


@pytest.fixture(scope="module")
def quick_env():
    """DFF_QUICK=1 and no MPLBACKEND (figures must come out inline) for the kernels of this module."""
    saved = {k: os.environ.get(k) for k in ("DFF_QUICK", "MPLBACKEND")}
    os.environ["DFF_QUICK"] = "1"
    os.environ.pop("MPLBACKEND", None)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_kernel_runs_this_python(quick_env, tmp_path):
    assert os.path.realpath(kernel_python(tmp_path)) == os.path.realpath(sys.executable)


@pytest.mark.parametrize("shipped", [False, True], ids=["with solutions", "as shipped"])
@pytest.mark.parametrize("py", NOTEBOOKS, ids=names(NOTEBOOKS))
def test_notebook_runs_in_quick_mode(py: Path, shipped: bool, quick_env, tmp_path):
    """Run All in a fresh kernel from a folder outside the repository: with the solutions pasted in, and as
    shipped (each exercise not written yet says so in one line and the notebook goes on)."""
    nb = run_notebook(jupytext.read(py) if shipped else with_solutions(py), tmp_path)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{py.name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    figures = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    need = MIN_FIGURES.get(py.stem, 1)
    assert figures >= need, f"{py.name} drew {figures} figures, expected at least {need}"
    if shipped:
        printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        said = printed.count("not written yet, so the notebook goes on")
        assert said == len(exercise_cells(nb)), f"{py.name}: {said} line(s) for {len(exercise_cells(nb))} exercises"
    written = {p.relative_to(tmp_path).parts[0] for p in tmp_path.iterdir()}
    assert written <= {"runs"}, f"{py.name} wrote outside its runs/ folder: {sorted(written)}"
