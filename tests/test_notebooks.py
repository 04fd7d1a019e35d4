"""The course notebooks (notebooks/0*_*.py, jupytext's percent format, paired with .ipynb files):
each pair agrees, the .ipynb files hold no outputs, every notebook runs top to bottom in quick mode
(DFF_QUICK=1) with its exercises filled in from notebooks/solutions/ and draws its figures, the
exercise checks reject wrong answers with a message naming the case, and a notebook run without the
`learn` extra says what to install."""
from __future__ import annotations

import copy
import math
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
    "01b_why_it_works": 5,
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


def ddpm_step_sigma_beta(x_t, t, eps_hat, betas, alpha_bar, noise):  # sigma_t^2 = beta_t, not beta_tilde_t
    mean = (x_t - betas[t] / (1 - alpha_bar[t]).sqrt() * eps_hat) / (1 - betas[t]).sqrt()
    return mean + betas[t].sqrt() * noise if t > 0 else mean


def ddpm_step_wraps_around(x_t, t, eps_hat, betas, alpha_bar, noise):  # alpha_bar[t - 1] is alpha_bar[-1] at t = 0
    mean = (x_t - betas[t] / (1 - alpha_bar[t]).sqrt() * eps_hat) / (1 - betas[t]).sqrt()
    return mean + ((1 - alpha_bar[t - 1]) / (1 - alpha_bar[t]) * betas[t]).sqrt() * noise


def ddpm_step_x0_coefficient(x_t, t, eps_hat, betas, alpha_bar, noise):  # sqrt(1 - alpha_bar_t) on eps, as in x0_hat
    mean = (x_t - (1 - alpha_bar[t]).sqrt() * eps_hat) / (1 - betas[t]).sqrt()
    return mean + ((1 - alpha_bar[t - 1]) / (1 - alpha_bar[t]) * betas[t]).sqrt() * noise if t > 0 else mean


def ddim_step_wraps_around(x_t, t, t_prev, eps_hat, alpha_bar):  # alpha_bar[-1] at t_prev = -1: the table's last
    x0_hat = (x_t - (1 - alpha_bar[t]).sqrt() * eps_hat) / alpha_bar[t].sqrt()
    return alpha_bar[t_prev].sqrt() * x0_hat + (1 - alpha_bar[t_prev]).sqrt() * eps_hat


def ddim_step_old_noise_level(x_t, t, t_prev, eps_hat, alpha_bar):  # eps re-noised at t's level, not t_prev's
    ab_prev = alpha_bar[t_prev] if t_prev >= 0 else torch.tensor(1.0, dtype=alpha_bar.dtype)
    x0_hat = (x_t - (1 - alpha_bar[t]).sqrt() * eps_hat) / alpha_bar[t].sqrt()
    return ab_prev.sqrt() * x0_hat + (1 - alpha_bar[t]).sqrt() * eps_hat


def training_loop(target="eps", t_share=(0.0, 1.0), ema=True):
    """notebook 01b's training loop, with one of the usual mistakes: another target, t from part of 0..T-1 only,
    or an EMA copy that is never updated."""
    def train(net, data_sampler, diffusion, steps, ema_decay, lr=2e-3):
        ema_net = copy.deepcopy(net)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        lo, hi = int(t_share[0] * diffusion.T), int(t_share[1] * diffusion.T)
        for _ in range(steps):
            x0 = data_sampler()
            t = torch.randint(lo, hi, (x0.shape[0],))
            eps = torch.randn_like(x0)
            loss = ((net(diffusion.q_sample(x0, t, eps), t) - (eps if target == "eps" else x0)) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if ema:
                with torch.no_grad():
                    for p_ema, p in zip(ema_net.parameters(), net.parameters()):
                        p_ema.lerp_(p, 1 - ema_decay)
        return ema_net
    return train


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
    (learn.check_ddpm_step_eps, ddpm_step_sigma_beta, r"case 't = 1, where beta_tilde_t.*expected .* got"),
    (learn.check_ddpm_step_eps, ddpm_step_wraps_around, r"case 'the last step, t = 0.*expected .* got"),
    (learn.check_ddpm_step_eps, ddpm_step_x0_coefficient, r"case 'the first step, t = T - 1'.*expected .* got"),
    (learn.check_ddim_step, ddim_step_wraps_around, r"case 'the last step, t = 19 -> t_prev = -1.*expected .* got"),
    (learn.check_ddim_step, ddim_step_old_noise_level, r"case 'consecutive steps, t = 500.*expected .* got"),
    (learn.check_train_denoiser, training_loop(target="x0"),
     r"case 't = 100, alpha_bar = 0.895'.*from E\[x0 \| x_t\].*allowed"),
    (learn.check_train_denoiser, training_loop(t_share=(0.5, 1.0)), r"case 't = 100, .*allowed 0.24"),
    (learn.check_train_denoiser, training_loop(t_share=(0.0, 0.5)), r"case 't = 550, .*allowed 0.4"),
    (learn.check_train_denoiser, training_loop(ema=False), r"case 'the returned network': .*still the initial ones"),
    (learn.check_train_denoiser, lambda net, *args: net, r"case 'the returned network': it is `net` itself"),
    (learn.check_resize_code, lambda c, f: torch.nn.functional.interpolate(c, scale_factor=1 / f, mode="area"),
     r"case 'a constant gray condition.*expected .* got"),
    (learn.check_resize_code, lambda c, f: torch.nn.functional.interpolate(2 * c - 1, scale_factor=1 / f),
     r"case 'fine detail, f = 4.*expected .* got"),
    (learn.check_resize_code, lambda c, f: torch.nn.functional.interpolate(2 * c - 1, scale_factor=1 / f,
                                                                           mode="bilinear"),
     r"case 'fine detail, f = 4.*expected .* got"),
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


@pytest.mark.parametrize("notebook", ["01b_why_it_works", "05_conditional_latent"])
def test_checks_accept_the_solutions_of(notebook):
    """Each solution of notebooks/solutions/NOTEBOOK.py, run in a namespace with what the notebook imports,
    passes its check and is handed back."""
    solutions = solutions_of(ROOT / "notebooks" / f"{notebook}.py")
    assert solutions
    for name, source in solutions.items():
        ns: dict = {"torch": torch, "math": math}
        exec(source, ns)
        assert getattr(learn, f"check_{name}")(ns[name]) is ns[name], name


def test_the_library_steps_chain_into_dffs_samplers():
    """ddpm_step_eps_library chained over all T steps, with noise drawn as dff's ddpm draws it, is dff's ddpm;
    ddim_step_library chained over DDIM's timesteps is dff's ddim (eta = 0): the exercises' reference steps are
    the samplers' own, here driven by the mixture's exact denoiser."""
    from dff.diffusion import GaussianDiffusion, ddim, ddim_timesteps, ddpm

    mixture, d = learn.ring_mixture(), GaussianDiffusion(1000, "linear")
    model = mixture.denoiser(d)  # the exact E[eps | x_t], float64
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, g = x_T, torch.Generator().manual_seed(1)
    for t in range(d.T - 1, -1, -1):
        z = torch.randn(x.shape, generator=g, dtype=x.dtype) if t > 0 else None
        x = learn.ddpm_step_eps_library(x, t, model(x, torch.full((256,), t)), d.betas, d.alpha_bar, z)
    expected = ddpm(model, d, x_T, generator=torch.Generator().manual_seed(1), progress=False)
    assert (x - expected).abs().max() < 1e-8 and expected.std() > 1  # the samples spread over the circle
    for spacing in ("leading", "trailing"):
        ts, x = ddim_timesteps(d.T, 20, spacing), x_T
        for k, t in enumerate(ts):
            t_prev = int(ts[k + 1]) if k + 1 < len(ts) else -1
            x = learn.ddim_step_library(x, int(t), t_prev, model(x, torch.full((256,), int(t))), d.alpha_bar)
        assert (x - ddim(model, d, x_T, steps=20, spacing=spacing, progress=False)).abs().max() < 1e-8, spacing


def test_the_library_resize_code_is_latent_spaces(tmp_path):
    """resize_code_library (notebook 05's exercise) equals LatentSpace.condition_code with condition 'resize', on a
    small random autoencoder of factor 4 saved as a diffusers folder."""
    from dff.models import LatentSpace
    from dff.models.autoencoders import build_autoencoder_kl

    build_autoencoder_kl(1, latent_channels=4, block_out_channels=(32, 32, 32), image_size=16,
                         mid_attention=False).save_pretrained(str(tmp_path), safe_serialization=True)
    space = LatentSpace(str(tmp_path), channels=1, scale=1.0, condition="resize")
    cond = torch.rand(2, 1, 16, 24, generator=torch.Generator().manual_seed(0))
    assert space.factor == 4
    assert torch.allclose(learn.resize_code_library(cond, space.factor), space.condition_code(cond), atol=1e-6)


@pytest.mark.parametrize("check", [learn.check_q_sample, learn.check_v_target, learn.check_psnr,
                                   learn.check_latent_scale, learn.check_posterior_mean, learn.check_ddpm_step_eps,
                                   learn.check_ddim_step, learn.check_train_denoiser, learn.check_resize_code])
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


def test_record_keeps_quoted_numbers_only_when_asked(tmp_path, monkeypatch):
    """learn.record returns the value as a float; with DFF_RECORD=FILE it adds it to that JSON file (what
    scripts/run_notebooks.py collects into notebooks/results/), and without it writes nothing."""
    import json

    monkeypatch.delenv("DFF_RECORD", raising=False)
    monkeypatch.chdir(tmp_path)
    assert learn.record("fid", torch.tensor(3.25)) == 3.25 and list(tmp_path.iterdir()) == []
    f = tmp_path / "record.json"
    monkeypatch.setenv("DFF_RECORD", str(f))
    learn.record("fid", 3.25), learn.record("share", 0.5), learn.record("fid", 3.5)
    assert json.loads(f.read_text()) == {"fid": 3.5, "share": 0.5}
