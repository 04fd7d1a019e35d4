"""Packed data for millions of images: `dff data pack FOLDER OUT` checks every file once, in parallel, and packs
them into tar shards; `data.root: OUT` trains from them without listing or decoding anything at start.

    OUT/shard-00000.tar ...   WebDataset's layout: each item one member `KEY.EXT` (the file's bytes unchanged,
                              KEY its 9-digit index), and `KEY.cls` its label when packed with --labels
    OUT/index.npy             (N,) records: shard, byte offset and size of each item's data, its label (-1: none),
                              its width and height (so that training checks sizes without decoding)
    OUT/index.json            format, item and shard counts, each item's source file (relative to FOLDER), the
                              class names, and whether the folder was array data

Why tar shards with an index, not Lightning's litdata or a WebDataset stream: litdata requires torchvision,
which cannot be installed beside the CPU build of torch here; a WebDataset stream reads each shard in order
and shuffles through a buffer, so a run resumed mid-epoch cannot repeat the uninterrupted one. The shards
here are WebDataset's format (other tools read them), and the index gives random access (one seek and one
read per item), so training keeps the folder path's order, crops and flips as functions of (seed, epoch,
position): the same mid-epoch resume, and each DDP rank reads its own share of the items.

A packed folder may also lie in object storage or on a web server: data.root s3://bucket/packed (gs://, az://,
https://, ... : any fsspec URL whose file system is installed, e.g. s3fs for S3). The index is read once, then
each item is one ranged read of its bytes, so nothing is downloaded whole and the order and resume stay the
same. Packing itself writes a local folder (upload it with your storage's own tool).
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .arrays import ArrayFolder, holds_arrays, inspect_array
from .folder import IMAGE_EXTENSIONS, ImageFolder, find_images, inspect_all, inspect_image

FORMAT = "dff-shards"
VERSION = 1
RECORD = np.dtype([("shard", "<i4"), ("offset", "<i8"), ("size", "<i8"), ("label", "<i4"), ("width", "<i4"),
                   ("height", "<i4")])


def is_url(root: str | Path) -> bool:
    """Whether data.root names object storage or a server (s3://, gs://, https://, memory://, ...), not a path."""
    return isinstance(root, str) and "://" in root and not root.startswith("file://")


def read_bytes(root: str | Path, name: str, start: Optional[int] = None, end: Optional[int] = None) -> bytes:
    """The bytes [start, end) of the file `name` in the folder `root`, a local path or an fsspec URL."""
    if is_url(root):
        import fsspec

        fs, path = fsspec.core.url_to_fs(f"{root.rstrip('/')}/{name}")  # file systems are cached by fsspec
        return fs.cat_file(path, start=start, end=end)
    with open(Path(root) / name, "rb") as f:
        f.seek(start or 0)
        return f.read() if end is None else f.read(end - (start or 0))


def packed_meta(root: str | Path) -> Optional[dict]:
    """index.json of a folder written by `dff data pack`; None for any other local folder. A URL must name a packed
    folder: one whose index cannot be read is an error that says why."""
    try:
        meta = json.loads(read_bytes(root, "index.json"))
    except (ValueError, OSError) as e:
        if is_url(root):
            raise ValueError(f"data.root {root}: cannot read its index.json ({type(e).__name__}: {e}); a URL must "
                             "name a folder written by `dff data pack`") from e
        return None
    except ImportError as e:  # fsspec knows the protocol but its package is missing (s3fs, gcsfs, adlfs, ...)
        raise ValueError(f"data.root {root}: {e}") from e
    if isinstance(meta, dict) and meta.get("format") == FORMAT:
        return meta
    if is_url(root):
        raise ValueError(f"data.root {root}: its index.json was not written by `dff data pack`")
    return None


def is_packed(root: str | Path) -> bool:
    """Whether `root` is a folder written by `dff data pack`."""
    return packed_meta(root) is not None


def pack(root: str | Path, out: str | Path, *, shard_items: int = 10_000, labels: bool = False,
         skip_bad: bool = False, workers: Optional[int] = None, progress: Callable[[str], None] = print) -> dict:
    """Check every image or array file below `root` once (in `workers` processes) and pack them into tar shards
    in `out` (written whole or not at all). A file that training would refuse stops the packing, named as
    `dff data check` names it, unless skip_bad (then it is left out and listed in out/skipped_files.txt).
    labels: each item's class is its top-level sub-folder (as data.labels). Returns index.json's content."""
    from ..files import atomic_folder

    root, out = Path(root), Path(out)
    if shard_items < 1:
        raise ValueError(f"--shard-items {shard_items}: expected at least 1")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty folder: choose another output for the shards")
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise ValueError(f"{out} lies inside the data folder {root}: choose an output outside it")
    arrays = holds_arrays(root)
    files = find_images(root, ArrayFolder.extensions if arrays else IMAGE_EXTENSIONS)
    workers = workers or min(8, os.cpu_count() or 1)
    progress(f"checking {len(files)} file(s) in {workers} process(es)")
    infos = inspect_all(files, inspect_array if arrays else inspect_image, workers)
    bad = [(p, i["error"]) for p, i in zip(files, infos) if i["error"]]
    if bad and not skip_bad:
        lines = "\n".join(f"  {p}: {why}" for p, why in bad[:20])
        raise ValueError(f"{len(bad)} image file(s) could not be decoded (corrupt or truncated); fix or remove them, "
                         f"or pass --skip-bad to pack the rest:\n{lines}")
    good = [p for p, i in zip(files, infos) if not i["error"]]
    good_infos = [i for i in infos if not i["error"]]
    if not good:
        raise ValueError(f"no readable file below {root}: nothing to pack")
    classes: list[str] = []
    if labels:
        rel = [p.relative_to(root) for p in good]
        loose = [str(p) for p, r in zip(good, rel) if len(r.parts) == 1]
        if loose:
            raise ValueError(f"--labels takes each class from a sub-folder of {root}, but {len(loose)} file(s) lie "
                             f"directly in it, e.g. {loose[0]}")
        classes = sorted({r.parts[0] for r in rel})
    records = np.zeros(len(good), RECORD)
    with atomic_folder(out) as tmp:
        for s, start in enumerate(range(0, len(good), shard_items)):
            name = f"shard-{s:05d}.tar"
            with tarfile.open(tmp / name, "w", format=tarfile.USTAR_FORMAT) as tar:
                for i in range(start, min(start + shard_items, len(good))):
                    p = good[i]
                    _add(tar, f"{i:09d}{p.suffix.lower()}", p.read_bytes())
                    if labels:
                        _add(tar, f"{i:09d}.cls", str(classes.index(p.relative_to(root).parts[0])).encode())
            with tarfile.open(tmp / name) as tar:  # where each item's data landed
                for m in tar:
                    if not m.name.endswith(".cls"):
                        i = int(m.name.split(".")[0])
                        w, h = good_infos[i]["size"]
                        records[i] = (s, m.offset_data, m.size, -1, w, h)
            progress(f"packed {min(start + shard_items, len(good))} / {len(good)}")
        if labels:
            records["label"] = [classes.index(p.relative_to(root).parts[0]) for p in good]
        np.save(tmp / "index.npy", records)
        meta = {"format": FORMAT, "version": VERSION, "items": len(good), "shard_items": shard_items,
                "shards": int(records["shard"].max()) + 1, "arrays": arrays, "classes": classes,
                "names": [str(p.relative_to(root)) for p in good]}
        (tmp / "index.json").write_text(json.dumps(meta))
        if bad:
            (tmp / "skipped_files.txt").write_text("".join(f"{p}\t{why}\n" for p, why in bad), errors="surrogateescape")
    return meta


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # no dates: the same files give the same shards
    tar.addfile(info, io.BytesIO(data))


_OPEN: dict[tuple[int, Path], int] = {}  # (process id, local shard) -> an open file descriptor


class Entry(str):
    """One packed item as the folder data sets see a file, a str for messages ("SOURCE in SHARD": the file it was
    packed from, relative to the packed folder's source, ending in its extension), with where its bytes lie."""

    source: str
    shard: Path | str  # a local path, or a URL
    offset: int
    size: int

    def __new__(cls, source: str, shard: Path | str, offset: int, size: int) -> "Entry":
        e = super().__new__(cls, f"{source} in {shard}")
        e.source, e.shard, e.offset, e.size = source, shard, offset, size
        return e

    def __reduce__(self):
        return Entry, (self.source, self.shard, self.offset, self.size)

    @property
    def suffix(self) -> str:
        return Path(self.source).suffix

    def read(self) -> bytes:
        """The item's bytes: one pread on its shard, kept open by this process (DataLoader workers open their own),
        or one ranged read of a shard in object storage."""
        if is_url(self.shard):
            root, name = self.shard.rsplit("/", 1)
            return read_bytes(root, name, self.offset, self.offset + self.size)
        key = (os.getpid(), self.shard)
        fd = _OPEN.get(key)
        if fd is None:
            fd = _OPEN[key] = os.open(self.shard, os.O_RDONLY)
        return os.pread(fd, self.size, self.offset)

    def open(self) -> io.BytesIO:
        """A file object of the item's bytes, named after the source file (what PIL and tifffile read)."""
        buf = io.BytesIO(self.read())
        buf.name = str(self)
        return buf


class Packed:
    """The index of a packed folder: len(), [i] -> Entry, labels, classes, arrays (whether it is array data)."""

    def __init__(self, root: str | Path):
        root = root.rstrip("/") if is_url(root) else Path(root)
        meta = packed_meta(root)
        if meta is None:
            raise ValueError(f"{root} is not a folder written by `dff data pack` (no index.json of {FORMAT})")
        if meta.get("version") != VERSION:
            raise ValueError(f"{root}: packed by format version {meta.get('version')}, this dff reads {VERSION}: "
                             "pack the folder again")
        self.root, self.meta = root, meta
        self.records = np.load(io.BytesIO(read_bytes(root, "index.npy")), allow_pickle=False)
        self.classes: list[str] = meta["classes"]
        self.arrays: bool = meta["arrays"]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Entry:
        r = self.records[i]
        name = f"shard-{int(r['shard']):05d}.tar"
        shard = f"{self.root}/{name}" if is_url(self.root) else self.root / name
        return Entry(self.meta["names"][i], shard, int(r["offset"]), int(r["size"]))

    @property
    def labels(self) -> Optional[list[int]]:
        return self.records["label"].tolist() if self.classes else None


class _FromShards:
    """What a folder data set changes to read a packed folder: its files are the index's entries, checked when
    they were packed, and its labels the packed ones."""

    def list_files(self, root) -> Packed:
        self.packed = Packed(root)
        return self.packed

    def check_files(self, image_size, crop, skip, workers=1) -> list:
        """Every item was decoded once by `dff data pack`; only the sizes are checked here, from the index, with
        the folder check's messages."""
        from .folder import check_images

        r = self.packed.records
        small = np.flatnonzero(np.minimum(r["width"], r["height"]) < image_size)
        if len(small) == 0 or crop == "resize":
            return []  # (resize upscales small images)
        if skip and len(small) < len(r):
            return [(self.packed[i], f"{r['width'][i]}x{r['height'][i]}, smaller than the training size {image_size} "
                     f"(crop={crop!r})") for i in small]
        sizes = {str(self.packed[i]): (int(r["width"][i]), int(r["height"][i])) for i in small}
        return check_images([self.packed[i] for i in small], image_size, crop, skip=skip,
                            inspect=lambda e: {"error": None, "size": sizes[str(e)]})

    def class_labels(self, root) -> tuple[list[str], list[int]]:
        if not self.packed.classes:
            raise ValueError(f"{root} was packed without labels: pack the folder again with --labels")
        return self.packed.classes, self.packed.labels


class PackedImages(_FromShards, ImageFolder):
    """ImageFolder over a packed folder: the same crops, flips, order and resume."""


class PackedArrays(_FromShards, ArrayFolder):
    """ArrayFolder over a packed folder of arrays."""


def folder_class(root: str | Path, arrays: bool) -> type:
    """The data set that reads `root`: a packed folder's or a plain one's, of images or of arrays."""
    if is_packed(root):
        return PackedArrays if arrays else PackedImages
    return ArrayFolder if arrays else ImageFolder
