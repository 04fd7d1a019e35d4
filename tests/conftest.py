import os
import sys
from pathlib import Path

# Tests never touch the network: the hub client reads this once, at import, and then makes no request of its own
# (not even the agent-registry fetch it makes when it builds headers). tests/test_hub.py points it at a local
# stand-in server instead.
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))


def write_images(folder: Path, n: int = 6, size: int = 12, ext: str = "png", seed: int = 0) -> list[Path]:
    """n random RGB images of size x size written to folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"img_{i:02d}.{ext}"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def image_folder(tmp_path) -> Path:
    root = tmp_path / "images"
    write_images(root, 4, 12, "png")
    write_images(root / "sub", 2, 12, "jpg", seed=1)
    return root


if "PYTEST_XDIST_WORKER" in os.environ:
    # Under pytest-xdist (`bash run.sh test` runs one worker per core) each worker, and every process its tests
    # start, uses one thread, so that the workers do not oversubscribe the cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
