"""A resumed run is the run that never stopped: the same batches, crops, flips, noise, EMA and learning rate,
bit for bit on this CPU (issue 13, item 4). The data stream behind it: data/stream.py."""
import csv
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from conftest import write_images
from dff.cli import fit
from dff.data.shards import pack
from dff.data.stream import Key, Stream, draw_seed, item_rng

TINY = ["--model.dim", "8", "--model.dim_mults", "[1, 2]", "--model.timesteps", "50", "--model.ema_decay", "0.9",
        "--model.warmup_steps", "4", "--data.image_size", "8", "--data.batch_size", "4",
        "--trainer.enable_progress_bar", "false", "--trainer.logger", "true", "--trainer.log_every_n_steps", "2",
        "--checkpoint.every_n_train_steps", "5", "--samples.every_n_steps", "3", "--samples.num", "2",
        "--samples.steps", "3", "--trainer.max_steps", "9"]


# ---------------------------------------------------------------------- the stream
def test_stream_deals_every_item_of_an_epoch_once_across_ranks():
    data = list(range(10))
    ranks = [Stream(data, seed=3, world=2, rank=r) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(4)
    a, b = (list(s) for s in ranks)
    assert len(a) == len(b) == 5 and sorted(a + b) == data  # disjoint, complete
    one = Stream(data, seed=3, world=1, rank=0)
    one.set_epoch(4)
    assert [int(k) for k in one] == [x for pair in zip(a, b) for x in pair]  # dealt in turn from one order
    one.set_epoch(5)
    assert [int(k) for k in one] != [x for pair in zip(a, b) for x in pair]  # a new order each epoch
    assert [k.seed for k in one] == [k.seed for k in one]  # a function of (seed, epoch)


def test_stream_epochs_cover_min_items_with_whole_permutations():
    s = Stream(list(range(6)), seed=0, min_items=20)
    items = [int(k) for k in s]
    assert len(s) == len(items) == 20
    for start in (0, 6, 12):
        assert sorted(items[start:start + 6]) == list(range(6))  # back-to-back permutations


def test_stream_resumes_after_the_items_taken():
    s = Stream(list(range(12)), seed=1)
    s.set_epoch(2)
    full = list(s)
    s.start = (2, 8)
    assert list(s) == full[8:] and [k.seed for k in s] == [k.seed for k in full[8:]]
    s.set_epoch(3)  # only that epoch is cut
    assert len(list(s)) == 12


def test_keys_keep_their_seed_through_pickling_and_give_their_own_stream():
    k = pickle.loads(pickle.dumps(Key(7, 123)))  # as DataLoader workers receive them
    assert int(k) == 7 and k.seed == 123
    (i, rng), (_, rng2) = item_rng(k, None), item_rng(Key(7, 123), None)
    assert i == 7 and rng.random() == rng2.random()
    assert draw_seed(1, 2) == draw_seed(1, 2) != draw_seed(2, 1) and 0 <= draw_seed(5) < 2**63


# ---------------------------------------------------------------------- resumed == uninterrupted
def losses(run: Path) -> dict[int, str]:
    """Logged training losses by step, as written (full float text)."""
    return {int(r["step"]): r["train/loss"] for r in csv.DictReader(open(run / "metrics.csv")) if r.get("train/loss")}


def interrupted_and_whole(tmp_path: Path, args: list[str]):
    """An uninterrupted 9-step run, and a run resumed from its step-5 checkpoint (mid-epoch, mid-log-interval,
    after a sample grid) in a folder of its own."""
    whole = fit(["--trainer.default_root_dir", str(tmp_path / "whole"), *TINY, *args])
    run = Path(whole.trainer.log_dir)
    shutil.copy(run / "checkpoints" / "step_000005.ckpt", tmp_path / "five.ckpt")
    resumed = fit(["--trainer.default_root_dir", str(tmp_path / "resumed"), *TINY, *args,
                   "--ckpt_path", str(tmp_path / "five.ckpt")])
    return whole, resumed


FOLDER = ["--data.dataset", "folder", "--data.channels", "3", "--data.num_workers", "0"]
CASES = {
    "folder": FOLDER,  # random crops and flips drawn per item (PIL)
    "folder, 2 workers": [*FOLDER[:-1], "2"],
    "folder on the device": [*FOLDER, "--data.on_device", "true"],  # crops and flips drawn per batch
    "packed by dff data pack": FOLDER,  # the same files from tar shards
    "digits with classes": ["--data.dataset", "digits", "--data.channels", "1", "--model.num_classes", "10",
                            "--model.label_dropout", "0.3"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_resumed_run_equals_the_uninterrupted_run_bit_for_bit(tmp_path, case):
    write_images(tmp_path / "images", 10, 12, "png")  # 2 batches per epoch: step 5 is mid-epoch
    root = tmp_path / "images"
    if case.startswith("packed"):
        pack(root, tmp_path / "packed", shard_items=4, progress=lambda s: None)  # 3 shards
        root = tmp_path / "packed"
    args = [*CASES[case], "--data.root", str(root)]
    whole, resumed = interrupted_and_whole(tmp_path, args)
    a, b = losses(Path(whole.trainer.log_dir)), losses(Path(resumed.trainer.log_dir))
    assert sorted(a) == [1, 3, 5, 7] and sorted(b) == [5, 7]
    assert {s: a[s] for s in b} == b  # step 5's value is the mean of steps 4 (before the checkpoint) and 5
    sa, sb = whole.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)  # network and EMA
    assert int(resumed.model.ema.num_updates) == 9


def test_packed_shards_train_as_the_folder_they_came_from(tmp_path):
    """Training from `dff data pack`'s shards sees the folder's items, crops and flips: the same losses."""
    write_images(tmp_path / "images", 10, 12, "png")
    pack(tmp_path / "images", tmp_path / "packed", shard_items=3, progress=lambda s: None)
    runs = [fit(["--trainer.default_root_dir", str(tmp_path / f"run_{root}"), *TINY, *FOLDER, "--data.root",
                 str(tmp_path / root), "--trainer.max_steps", "4"]) for root in ("images", "packed")]
    a, b = (losses(Path(r.trainer.log_dir)) for r in runs)
    assert a == b and len(a) == 2


def test_the_number_of_workers_does_not_change_the_batches(tmp_path):
    write_images(tmp_path / "images", 10, 12, "png")
    runs = [fit(["--trainer.default_root_dir", str(tmp_path / f"w{w}"), *TINY, *FOLDER[:-1], str(w),
                 "--data.root", str(tmp_path / "images"), "--trainer.max_steps", "4"]) for w in (0, 2)]
    assert losses(Path(runs[0].trainer.log_dir)) == losses(Path(runs[1].trainer.log_dir))
