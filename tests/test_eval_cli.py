"""`dff eval` on an unconditional model: FID/KID of its samples against a reference set."""
import json

import pytest

from dff.cli import main
from dff.module import PixelDiffusion
from dff.pretrained import save_pretrained


def test_eval_generation_writes_fid_and_kid(tmp_path):
    save_pretrained(PixelDiffusion(image_size=8, channels=1, dim=8, dim_mults=[1, 2], timesteps=20,
                                   schedule="cosine"), tmp_path / "w")
    main(["eval", str(tmp_path / "w"), "--data", "digits", "--num", "80", "--steps", "2", "--batch-size", "40",
          "--json", str(tmp_path / "s.json")])
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["n_samples"] == 80 and s["n_reference"] == 1797 and s["feature_dim"] == 64
    assert s["fid"] > 10  # an untrained network's samples are far from digits
    with pytest.raises(SystemExit, match="at least 65 images"):
        main(["eval", str(tmp_path / "w"), "--data", "digits", "--num", "40", "--steps", "2"])
