"""dff exports on the Hugging Face Hub, downloaded: `load_pretrained("owner/name")` and `dff sample owner/name` fetch
an export (its safetensors and JSON files only: nothing that unpickles). Uploading (`dff push`) is tools/push.py.

The hub is reached at HF_ENDPOINT (default https://huggingface.co) with huggingface_hub's client; its cache is
asked first, so a model downloaded once loads offline (HF_HUB_OFFLINE=1).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
DOWNLOADED = ["config.json", "model.safetensors", "autoencoder/*.json", "autoencoder/*.safetensors"]


def endpoint() -> str:
    """The hub's address: HF_ENDPOINT as it is now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_repo_id(name: str) -> bool:
    """Whether `name` reads as a hub repository id (owner/name) and is not a local path."""
    return bool(REPO_ID.match(str(name))) and not Path(name).exists()


def download(repo_id: str, revision: Optional[str] = None) -> Path:
    """The folder of a dff export on the hub (its config.json, model.safetensors and autoencoder/), from the hub's
    cache when it is there, else downloaded; a clear error when neither works."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    from .autoencoders import hub_reachable

    kw = dict(repo_id=repo_id, revision=revision, allow_patterns=DOWNLOADED, endpoint=endpoint())
    try:
        folder = Path(snapshot_download(**kw, local_files_only=True))
    except (OSError, ValueError, HfHubHTTPError):
        if not hub_reachable():
            raise FileNotFoundError(f"{repo_id!r} is no local path, and as a hub repository it is not in the hub's "
                                    f"cache and the hub ({endpoint()}) cannot be reached: give a local run or "
                                    "export, or download it where there is internet")
        try:
            folder = Path(snapshot_download(**kw))
        except (OSError, ValueError, HfHubHTTPError) as e:
            raise FileNotFoundError(f"{repo_id!r} is no local path, and as a hub repository it could not be "
                                    f"downloaded from {endpoint()} ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0]})") from None
    if not (folder / "model.safetensors").is_file():
        raise ValueError(f"hub repository {repo_id!r} holds no dff export (config.json and model.safetensors)")
    return folder
