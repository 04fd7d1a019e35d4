"""Every measured number the notes, the notebooks and the READMEs quote comes from a result file in the repository
(scripts/quoted_numbers.py): each quoted number equals its source rounded as written, each number written as a
measurement has a source, the notebooks' sources are full-mode runs (scripts/run_notebooks.py), and their times are
stated once, in notebooks/README.md. The checker itself fails on a changed number, a missing source, a wrong key and
an unsourced measurement."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("quoted_numbers", ROOT / "scripts" / "quoted_numbers.py")
qn = importlib.util.module_from_spec(_spec)
sys.modules["quoted_numbers"] = qn
_spec.loader.exec_module(qn)

NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("0*_*.py"))
RESULTS = ROOT / "notebooks" / "results"


def test_every_quoted_number_matches_its_source_and_every_measurement_has_one():
    problems, claimed = qn.check_all()
    assert claimed >= 60, f"only {claimed} quoted numbers carry a source marker"
    assert not problems, (f"{len(problems)} quoted number(s) without a matching source (python "
                          "scripts/quoted_numbers.py lists them; --fill rewrites marked numbers from their "
                          "sources, then reread the sentences):\n" + "\n".join(map(str, problems)))


def test_sources_are_files_of_the_repository():
    for path, file in qn.iter_markers():
        assert not Path(file).is_absolute() and ".." not in Path(file).parts, f"{path.name}: {file}"
        assert (ROOT / file).is_file(), f"{path.name} quotes {file}, which is not in the repository"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_each_notebook_has_a_full_mode_result_file(name):
    f = RESULTS / f"{name}.json"
    assert f.is_file(), f"no {f.relative_to(ROOT)}: run python scripts/run_notebooks.py {name}"
    res = json.loads(f.read_text())
    assert res["mode"].startswith("full") and res["wall_s"] > 0 and res["machine"] and res["date"]
    assert res["values"], f"{f.name} recorded no values: does the notebook call learn.record?"


def test_notebook_times_are_stated_once_in_the_notebooks_readme():
    """Each notebook's full-run time is quoted from its result file in notebooks/README.md, and nowhere else."""
    readme = (ROOT / "notebooks" / "README.md").read_text()
    for name in NOTEBOOKS:
        assert f"notebooks/results/{name}.json wall_s" in readme, f"notebooks/README.md does not quote {name}'s time"
    for path, text in [(p, qn.prose(p)) for p in qn.sources() if p.name != "README.md"]:
        assert " wall_s" not in text, f"{path.name} quotes a notebook's run time: say it once, in notebooks/README.md"


# ---------------------------------------------------------------------- the checker fails when it should
@pytest.fixture
def source(tmp_path):
    f = tmp_path / "result.json"
    f.write_text(json.dumps({"fid": 3.9712, "rows": [{"share": 0.809}], "s": 1402.7, "fast": 2061.0, "slow": 1090.6}))
    return f


def check(tmp_path, text: str) -> list[str]:
    doc = tmp_path / "note.md"
    doc.write_text(text)
    return [p.what for p in qn.check_file(doc)[0]]


def test_checker_accepts_numbers_that_match_at_their_decimals(tmp_path, source):
    text = (f"FID 3.97<!-- n: {source} fid --> and 80.9%<!-- n: {source} rows.0.share*100 -->, "
            f"23 min<!-- n: {source} s/60 -->, 1,403 s<!-- n: {source} s -->, x1.89<!-- n: {source} fast/@slow -->; "
            f"FID 4.0, 3.971<!-- n: {source} fid fid -->\n")
    assert check(tmp_path, text) == []


@pytest.mark.parametrize("text, message", [
    ("FID 3.96<!-- n: {f} fid -->", r"quotes 3.96 for .* fid = 3.9712"),
    ("80%<!-- n: {f} rows.0.share*100 -->", r"quotes 80 for .*= 80.9"),
    ("FID 3.97<!-- n: {f} fdi -->", r"fdi: no 'fdi'"),
    ("FID 3.97<!-- n: {f}.missing fid -->", r"cannot be read"),
    ("FID 3.97 and 4.2<!-- n: {f} fid -->", r"quotes 4.2 for"),
    ("it took 23 min and scored FID 3.97.", r"23 has no source"),
    ("| model | FID |\n| --- | --- |\n| ours | 3.97 |\n", r"3.97 has no source"),
    ("a speed-up of x1.89 here", r"1.89 has no source"),
])
def test_checker_names_each_failure(tmp_path, source, text, message):
    import re

    got = check(tmp_path, text.format(f=source))
    assert got and re.search(message, got[0]), got


def test_fill_rewrites_marked_numbers_from_their_sources(tmp_path, source, monkeypatch):
    doc = tmp_path / "nb.py"
    doc.write_text(f"# %% [markdown]\n# FID 0.00<!-- n: {source} fid --> and 0%<!-- n: {source} rows.0.share*100 -->\n"
                   "# %%\nx = 1.5  # code is not prose\n")
    assert qn.fill(doc) == 2
    assert doc.read_text().splitlines()[1] == (f"# FID 3.97<!-- n: {source} fid --> and "
                                               f"81%<!-- n: {source} rows.0.share*100 -->")
    assert qn.check_file(doc)[0] == []
