"""The Hub: `dff push` uploads a run's export with a model card (and the diffusers pipeline), `load_pretrained` and
`dff sample` take the repository id, diffusers loads the same repository. huggingface_hub's own client talks to
a local stand-in server (tests/hub_server.py): no network."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.utils import build_hf_headers

from dff.cli import main
from dff.pretrained import load_pretrained
from hub_server import StandInHub

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub_run")
    main(["fit", "--config", str(ROOT / "configs" / "pixel_digits.yaml"), "--model.dim", "8",
          "--trainer.max_steps", "4", "--trainer.log_every_n_steps", "1", "--samples.every_n_steps", "2",
          "--samples.num", "4", "--samples.steps", "2", "--eval.every_n_steps", "4", "--eval.num", "70",
          "--eval.steps", "3", "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir",
          str(root / "runs")])
    return root / "runs" / "version_0"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with StandInHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_stand_in")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        # the client's one request of its own (a registry it fetches once per process, when it first builds its
        # headers) is settled while offline (conftest.py), so that no request leaves for the real hub
        build_hf_headers()
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        connect = socket.create_connection

        def local_only(address, *args, **kwargs):  # every connection goes to the stand-in, none elsewhere
            if address[0] != "127.0.0.1":
                raise AssertionError(f"a connection to {address} left this machine")
            return connect(address, *args, **kwargs)

        monkeypatch.setattr(socket, "create_connection", local_only)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
        yield hub


def test_push_uploads_the_export_a_card_and_the_diffusers_pipeline_and_the_id_loads_back(digits_run, hub, tmp_path):
    main(["push", str(digits_run), "me/digits"])
    files = hub.state.repos["me/digits"]
    assert sorted(files) == ["README.md", "config.json", "model.safetensors", "model_index.json", "samples.png",
                             "scheduler/scheduler_config.json", "unet/config.json",
                             "unet/diffusion_pytorch_model.safetensors"]
    assert files["model.safetensors"] == (digits_run / "export" / "model.safetensors").read_bytes()
    assert files["samples.png"] == (digits_run / "samples" / "step_000004.png").read_bytes()
    card = files["README.md"].decode()
    assert hub.state.cards_checked == 1 and card.startswith("---\nlibrary_name: dff\n")
    for part in ("| data set | digits |", "## Training", "| steps | 4 of 4 |", "| eval/fid |",
                 'load_pretrained("me/digits")', 'DiffusionPipeline.from_pretrained("me/digits")'):
        assert part in card, part
    # the id loads back: only the export's safetensors and JSON are fetched, and it samples as the local export
    model = load_pretrained("me/digits")
    fetched = {p for m, p in hub.state.requests if m == "GET" and "/resolve/" in p}
    assert {p.rsplit("/", 1)[-1] for p in fetched} == {"config.json", "model.safetensors"}
    local = load_pretrained(digits_run)
    assert torch.equal(model.sample(4, "ddim", steps=3, seed=1, progress=False),
                       local.sample(4, "ddim", steps=3, seed=1, progress=False))
    # dff sample takes the id too
    main(["sample", "me/digits", "--num", "2", "--steps", "2", "--out", str(tmp_path / "s"), "--no-progress"])
    assert (tmp_path / "s" / "grid.png").exists()
    # downloaded once, it loads offline from the hub's cache, without a request
    n = len(hub.state.requests)
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        load_pretrained("me/digits")
    finally:
        del os.environ["HF_HUB_OFFLINE"]
    assert len(hub.state.requests) == n


def test_diffusers_loads_the_pushed_repository_and_samples_dff_s_images(digits_run, hub, tmp_path):
    main(["push", str(digits_run), "me/digits"])
    code = ("import sys, numpy, torch\n"
            "from diffusers import DiffusionPipeline\n"
            "pipe = DiffusionPipeline.from_pretrained('me/digits')\n"
            "x = pipe(batch_size=3, generator=torch.Generator().manual_seed(2), num_inference_steps=5, eta=0.0,\n"
            "         use_clipped_model_output=True, output_type='np').images\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'dff']\n"
            "numpy.save(sys.argv[1], x)\n")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "diffusers_cache")}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.npy")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = torch.from_numpy(np.load(tmp_path / "x.npy")).permute(0, 3, 1, 2)
    ours = load_pretrained(digits_run).sample(3, "ddim", steps=5, seed=2, progress=False)
    torch.testing.assert_close(theirs, ours, atol=5e-5, rtol=0)


def test_what_push_and_the_hub_refuse_is_one_line(digits_run, hub, tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="dff push: 'not-a-repo-id' is not a hub repository id"):
        main(["push", str(digits_run), "not-a-repo-id"])
    with pytest.raises(SystemExit, match="a checkpoint; push uploads exports"):
        main(["push", str(digits_run / "checkpoints" / "last.ckpt"), "me/digits"])
    with pytest.raises(FileNotFoundError, match="'me/missing' is no local path, and as a hub repository it could "
                                                "not be downloaded"):
        load_pretrained("me/missing")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing cached and offline: said at once, no request
    n = len(hub.state.requests)
    with pytest.raises(SystemExit, match="'me/other' is no local path, .* cannot be reached"):
        main(["sample", "me/other", "--num", "1", "--out", str(tmp_path / "o")])
    assert len(hub.state.requests) == n
