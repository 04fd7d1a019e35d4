"""`dff data pack`: files checked once, in parallel, packed into tar shards that train as the folder did."""
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from conftest import write_images
from dff.cli import main
from dff.data.arrays import ArrayFolder, DataRange
from dff.data.check import check_folder, report
from dff.data.datamodule import ImageDataModule
from dff.data.folder import ImageFolder, check_images, find_images, inspect_image
from dff.data.shards import Packed, PackedArrays, PackedImages, is_packed, pack
from dff.data.stream import Key

QUIET = dict(progress=lambda s: None)


def labelled_folder(root, n=6):
    for c in ("cats", "dogs"):
        write_images(root / c, n, 12, "png")
    return root


def test_packed_items_are_the_folder_items_byte_for_byte_with_their_labels(tmp_path):
    root = labelled_folder(tmp_path / "images")
    meta = pack(root, tmp_path / "packed", shard_items=5, labels=True, **QUIET)
    assert meta["items"] == 12 and meta["shards"] == 3 and meta["classes"] == ["cats", "dogs"]
    assert is_packed(tmp_path / "packed") and not is_packed(root)
    with tarfile.open(tmp_path / "packed" / "shard-00000.tar") as tar:  # WebDataset's layout: KEY.EXT, KEY.cls
        assert tar.getnames()[:4] == ["000000000.png", "000000000.cls", "000000001.png", "000000001.cls"]
    files = find_images(root)
    packed = Packed(tmp_path / "packed")
    assert [e.source for e in packed] == [str(p.relative_to(root)) for p in files]
    assert all(packed[i].read() == files[i].read_bytes() for i in range(len(files)))
    a = ImageFolder(root, 8, 3, labels=True, seed=0)
    b = PackedImages(tmp_path / "packed", 8, 3, labels=True, seed=0)
    assert a.classes == b.classes and a.labels == b.labels and len(a) == len(b)
    for i in range(len(a)):  # the same crop and flips for the same key
        x, y = a[Key(i, 1000 + i)], b[Key(i, 1000 + i)]
        assert torch.equal(x["image"], y["image"]) and x["label"] == y["label"]


def test_packing_names_bad_files_as_the_check_does_and_can_leave_them_out(tmp_path, capsys):
    root = tmp_path / "images"
    write_images(root, 4, 12, "png")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "empty.png").write_bytes(b"")
    text, _ = report(check_folder(root))
    with pytest.raises(ValueError, match=r"2 image file\(s\) could not be decoded") as e:
        pack(root, tmp_path / "p1", **QUIET)
    for name in ("broken.png", "empty.png"):
        line = next(ln.strip() for ln in str(e.value).splitlines() if name in ln)
        assert line.split(":")[0] in text  # the same file, named as `dff data check` names it
    assert not (tmp_path / "p1").exists()  # nothing half-written
    meta = pack(root, tmp_path / "p2", skip_bad=True, **QUIET)
    assert meta["items"] == 4
    skipped = (tmp_path / "p2" / "skipped_files.txt").read_text()
    assert "broken.png" in skipped and "empty.png" in skipped
    with pytest.raises(SystemExit, match="dff: .*already exists and is not an empty folder"):
        main(["data", "pack", str(root), str(tmp_path / "p2")])
    with pytest.raises(SystemExit, match="lies inside the data folder"):
        main(["data", "pack", str(root), str(root / "shards")])
    with pytest.raises(SystemExit, match="needs the folder and the output"):
        main(["data", "pack", str(root)])
    with pytest.raises(SystemExit, match="was packed without labels"):
        main(["fit", "--data.dataset", "folder", "--data.root", str(tmp_path / "p2"), "--data.labels", "true",
              "--data.image_size", "8",
              "--model.num_classes", "2", "--trainer.max_steps", "1", "--trainer.default_root_dir",
              str(tmp_path / "runs")])


def test_packed_images_smaller_than_the_training_size_are_named(tmp_path):
    root = tmp_path / "images"
    write_images(root, 3, 12, "png")
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(root / "tiny.png")
    pack(root, tmp_path / "packed", **QUIET)
    with pytest.raises(ValueError, match=r"smaller than the training size 8.*\n  tiny.png in .*shard-00000.tar: 6x6"):
        PackedImages(tmp_path / "packed", 8, 3)
    ds = PackedImages(tmp_path / "packed", 8, 3, on_bad_file="skip")
    assert len(ds) == 3 and [p.source for p, _ in ds.skipped] == ["tiny.png"]
    assert len(PackedImages(tmp_path / "packed", 8, 3, crop="resize")) == 4


def test_packed_arrays_keep_their_bands_and_range(tmp_path):
    root = tmp_path / "tiles"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        tifffile.imwrite(root / f"t{i}.tif", rng.integers(0, 4096, (13, 12, 12), dtype=np.uint16),
                         photometric="minisblack", planarconfig="separate")
    meta = pack(root, tmp_path / "packed", **QUIET)
    assert meta["arrays"]
    r = DataRange((0.0,) * 13, (4095.0,) * 13, "uint16")
    a = ArrayFolder(root, 8, 13, data_range=r, seed=0)
    b = PackedArrays(tmp_path / "packed", 8, 13, data_range=r, seed=0)
    assert all(torch.equal(a[Key(i, i)]["image"], b[Key(i, i)]["image"]) for i in range(3))
    dm = ImageDataModule("folder", str(tmp_path / "packed"), image_size=8, channels=13, normalize="percentile")
    assert dm.reads_arrays and dm.data_range["dtype"] == "uint16"
    dm.setup()
    assert isinstance(dm.train_set, PackedArrays)
    assert json.loads((tmp_path / "packed" / "index.json").read_text())["names"] == ["t0.tif", "t1.tif", "t2.tif"]


def test_the_folder_check_in_several_processes_finds_what_one_finds(tmp_path):
    root = tmp_path / "images"
    write_images(root, 300, 10, "png")  # enough files for worker processes
    (root / "zz_bad.png").write_bytes(b"nope")
    files = find_images(root)
    messages = []
    for workers in (1, 2):
        with pytest.raises(ValueError) as e:
            check_images(files, 8, "random", inspect=inspect_image, workers=workers)
        messages.append(str(e.value))
    assert messages[0] == messages[1] and "zz_bad.png" in messages[0]


class Rank:
    """What the data module asks of Lightning's strategy under DDP, for one rank of two: broadcast(obj) gives
    rank 0's object (rank 0 its own; the others `from_rank_0`) and keeps what this rank sent."""

    def __init__(self, rank: int, from_rank_0=None):
        self.world_size, self.global_rank, self.is_global_zero = 2, rank, rank == 0
        self.root_device = torch.device("cpu")
        self.from_rank_0, self.sent = from_rank_0, []

    def broadcast(self, obj, src=0):
        self.sent.append(obj)
        return obj if self.is_global_zero else self.from_rank_0


def on_rank(root, strategy, tmp_path, **kw):
    from types import SimpleNamespace

    dm = ImageDataModule("folder", str(root), image_size=8, channels=3, num_workers=0, **kw)
    dm.trainer = SimpleNamespace(strategy=strategy, is_global_zero=strategy.is_global_zero, log_dir=str(tmp_path))
    dm.setup()
    return dm


def test_under_ddp_rank_0_checks_the_folder_once_and_the_others_take_its_verdict(tmp_path, monkeypatch):
    import dff.data.folder as folder

    root = tmp_path / "images"
    write_images(root, 6, 12, "png")
    (root / "zz_bad.png").write_bytes(b"nope")
    zero = Rank(0)
    dm0 = on_rank(root, zero, tmp_path, on_bad_file="skip")
    verdict = zero.sent[0]
    assert [p.name for p, _ in verdict["train"]] == ["zz_bad.png"] and verdict["val"] == []
    monkeypatch.setattr(folder, "inspect_all", lambda *a, **k: pytest.fail("rank 1 decoded the files again"))
    dm1 = on_rank(root, Rank(1, verdict), tmp_path, on_bad_file="skip")
    assert dm1.train_set.files == dm0.train_set.files and len(dm1.train_set.files) == 6
    assert dm1.skipped == dm0.skipped
    # a check that stops the run on rank 0 stops the others too, instead of leaving them waiting
    monkeypatch.undo()
    zero = Rank(0)
    with pytest.raises(ValueError, match="zz_bad.png"):
        on_rank(root, zero, tmp_path)
    assert "zz_bad.png" in zero.sent[0]["error"]
    with pytest.raises(ValueError, match=r"rank 1 stops with rank 0, whose data check failed: 1 image file\(s\) could"):
        on_rank(root, Rank(1, zero.sent[0]), tmp_path)


def test_two_ddp_processes_stop_together_on_a_bad_file(tmp_path):
    """The bad file named by rank 0 ends both processes (no rank left waiting for a verdict)."""
    write_images(tmp_path / "images", 8, 12, "png")
    (tmp_path / "images" / "zz_bad.png").write_bytes(b"nope")
    proc = run_ddp(tmp_path, tmp_path / "images")
    assert proc.returncode != 0 and "zz_bad.png" in proc.stderr + proc.stdout
    assert "rank 1 stops with rank 0, whose data check failed" in proc.stderr + proc.stdout


def test_two_process_ddp_trains_from_a_packed_folder(tmp_path):
    """Both ranks read the shards (each its own share of the items, dealt by data/stream.py) and the run ends."""
    write_images(tmp_path / "images", 16, 12, "png")
    pack(tmp_path / "images", tmp_path / "packed", shard_items=4, **QUIET)
    proc = run_ddp(tmp_path, tmp_path / "packed")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "ddp" / "version_0" / "export" / "model.safetensors").exists()


def run_ddp(tmp_path, root):
    """`dff fit` of a tiny model on `root` in two CPU processes (gloo), on a port of its own."""
    import os
    import socket
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "dff.cli", "fit", "--config", "configs/pixel_digits.yaml", "--model.dim", "8",
           "--data.dataset", "folder", "--data.root", str(root), "--data.channels", "3",
           "--data.image_size", "8", "--data.batch_size", "4", "--trainer.max_steps", "3",
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--trainer.enable_progress_bar", "false", "--samples.every_n_steps", "0",
           "--trainer.default_root_dir", str(tmp_path / "ddp")]
    with socket.socket() as sock:  # a port of its own: another DDP test may run beside this one
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                              env={**os.environ, "MASTER_PORT": str(port)}, cwd=Path(__file__).resolve().parents[1])
    except subprocess.TimeoutExpired:
        pytest.fail("two-process DDP run did not end in 240 s (a rank left waiting)")


def test_a_packed_folder_in_object_storage_trains_as_the_local_one(tmp_path, capsys):
    """data.root as an fsspec URL: the index read once, each item one ranged read. fsspec's in-memory file system
    stands in for S3 / GCS / a web server (the same calls: cat_file with start and end)."""
    import fsspec

    write_images(tmp_path / "images", 10, 12, "png")
    pack(tmp_path / "images", tmp_path / "packed", shard_items=4, **QUIET)
    fs = fsspec.filesystem("memory")
    fs.put(str(tmp_path / "packed"), "/bucket/packed", recursive=True)
    url = "memory://bucket/packed"
    try:
        assert is_packed(url) and len(Packed(url)) == 10
        local, remote = PackedImages(tmp_path / "packed", 8, 3, seed=0), PackedImages(url, 8, 3, seed=0)
        assert str(remote.files[0]).endswith("in memory://bucket/packed/shard-00000.tar")
        assert all(torch.equal(local[Key(i, i)]["image"], remote[Key(i, i)]["image"]) for i in range(10))
        main(["fit", "--config", "configs/pixel_digits.yaml", "--model.dim", "8", "--data.dataset", "folder",
              "--data.root", url, "--data.channels", "3", "--data.image_size", "8", "--data.batch_size", "4",
              "--data.num_workers", "0", "--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false",
              "--samples.every_n_steps", "0", "--trainer.default_root_dir", str(tmp_path / "runs")])
        assert (tmp_path / "runs" / "version_0" / "export" / "model.safetensors").exists()
        # a URL that is not a packed folder, and a protocol whose package is missing, say so
        fs.put(str(tmp_path / "images"), "/bucket/images", recursive=True)
        with pytest.raises(ValueError, match="memory://bucket/images: cannot read its index.json .* `dff data pack`"):
            ImageDataModule("folder", "memory://bucket/images", image_size=8).setup()
        import importlib.util

        if importlib.util.find_spec("s3fs") is None:  # (with s3fs installed this would ask the network)
            with pytest.raises(ValueError, match="data.root s3://bucket/packed: .*s3fs"):
                ImageDataModule("folder", "s3://bucket/packed", image_size=8).setup()
    finally:
        fs.rm("/bucket", recursive=True)
