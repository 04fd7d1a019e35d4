"""`dff data check` on a corpus of bad inputs it generates: each finding is reported, and the exit code
says whether training would stop."""
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dff.cli import main
from dff.data.check import check_folder, report

RNG = np.random.default_rng(0)


def rgb(h: int = 16, w: int = 16) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))


def bad_corpus(root: Path) -> Path:
    """One file of every kind the check knows, beside two good ones."""
    root.mkdir(parents=True)
    rgb().save(root / "good_1.png"), rgb().save(root / "good_2.jpg")
    buf = io.BytesIO()
    rgb().save(buf, "PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.png").write_text("this is text, not an image")
    Image.fromarray(RNG.integers(0, 65536, (16, 16)).astype(np.uint16)).save(root / "scan16.png")
    rgb().convert("CMYK").save(root / "cmyk.jpg")
    pal = rgb().convert("P")
    pal.info["transparency"] = 0
    pal.save(root / "palette.png")
    rgb(1, 1).save(root / "tiny.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    rgb().save(root / "rotated.jpg", exif=exif)
    return root


def test_every_finding_is_reported(tmp_path):
    root = bad_corpus(tmp_path / "data")
    found = check_folder(root, image_size=8)
    names = {k: sorted(Path(item.split(":")[0]).name for item in v) for k, v in found.items() if k != "files"}
    assert names["undecodable"] == ["notes.png", "truncated.png"]
    assert names["zero-byte"] == ["empty.jpg"]
    assert names["too small"] == ["tiny.png"]
    assert names["high bit depth"] == ["scan16.png"]
    assert names["CMYK"] == ["cmyk.jpg"] and names["palette"] == ["palette.png"]
    assert names["EXIF-rotated"] == ["rotated.jpg"]
    text, stops = report(found)
    assert stops and "verdict: 4 file(s) would stop training" in text and "10 image file(s)" in text


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    rgb(64, 64).save(tmp_path / "d" / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 = 4096 > 2 x 1000: PIL's hard limit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = check_folder(tmp_path / "d")
    assert "DecompressionBombError" in found["undecodable"][0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 4096 > 3000: the warning limit only
    assert check_folder(tmp_path / "d")["very large"] and "undecodable" not in check_folder(tmp_path / "d")


def test_pairs_layouts(tmp_path):
    root = tmp_path / "ab"
    (root / "A").mkdir(parents=True), (root / "B").mkdir(parents=True)
    rgb().save(root / "A" / "x.png"), rgb().save(root / "B" / "x.png"), rgb().save(root / "A" / "lonely.png")
    found = check_folder(root, pairs="folders")
    assert len(found["unpaired"]) == 1 and "lonely.png" in found["unpaired"][0]
    sbs = tmp_path / "sbs"
    sbs.mkdir()
    rgb(16, 33).save(sbs / "odd.png"), rgb(16, 32).save(sbs / "even.png")
    assert [Path(i.split(":")[0]).name for i in check_folder(sbs, pairs="side_by_side")["odd width"]] == ["odd.png"]


def test_command_exit_codes(tmp_path, capsys):
    good = tmp_path / "good"
    good.mkdir()
    rgb().save(good / "a.png")
    main(["data", "check", str(good), "--image-size", "16"])
    assert "verdict: ready to train" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["data", "check", str(bad_corpus(tmp_path / "bad")), "--image-size", "8"])
    assert e.value.code == 1 and "would stop training" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="dff: data folder .*missing.* does not exist"):
        main(["data", "check", str(tmp_path / "missing")])
    # crop resize: small images are upscaled, not a stop
    main(["data", "check", str(good), "--image-size", "32", "--crop", "resize"])
    assert "upscaled" in capsys.readouterr().out
