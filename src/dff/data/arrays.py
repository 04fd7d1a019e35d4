"""Arrays and multiband files: TIFF of any band count and dtype, `.npy` / `.npz`, in the data's own units.

    a          one file as an array (H, W, C) in its own dtype and units: a Sentinel-2 tile's 13 uint16 bands,
               a microscope's stains, a float field
    bands      the channels kept, numbered from 1 as GDAL and rasterio number bands (data.bands: [4, 3, 2])
    lo, hi     per channel, the values that map to 0 and 1: x = clip((a - lo) / (hi - lo), 0, 1) on the way in,
               a = lo + x (hi - lo) on the way out (DataRange)

How lo and hi are chosen (data.normalize, data.value_range):
    dtype       the dtype's range, as for images: uint8 [0, 255], uint16 [0, 65535], float [0, 1]. A 12-bit
                sensor in 16-bit files then uses 1/16 of [0, 1]: give data.value_range [0, 4095] instead
    percentile  per channel, the 0.1th and 99.9th percentiles of the training data (measured once, on up to
                256 files; 0.2% of values are clipped): robust to hot pixels and saturated glints that a
                min/max would let set the scale, and what keeps a band whose values sit in a narrow window
                (a 12-bit band, a dim stain) from being squeezed into a sliver of [0, 1]
    value_range [lo, hi], numbers or one per channel: known physical bounds (a sensor's bit depth, reflectance
                in [0, 1], a temperature range)

The range is stored with the model (hparams `data_range`, so checkpoints and exports carry it), and `dff sample`
and `dff translate` write `.tif` / `.npy` files in the data's units and dtype.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .folder import IMAGE_EXTENSIONS, ImageFolder, crop_box, opened, walk_files

ARRAY_EXTENSIONS: tuple[str, ...] = (".npy", ".npz", ".tif", ".tiff")
MAX_CHANNELS = 64
PERCENTILES: tuple[float, float] = (0.1, 99.9)
STAT_FILES = 256  # files read to measure the percentiles
STAT_VALUES = 1 << 20  # values per channel kept from those files (an even subsample)


def dtype_range(dtype: np.dtype) -> tuple[float, float]:
    """(lo, hi) of images of this dtype: the integer type's range, [0, 1] for floats."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return 0.0, 1.0
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return (0.0 if info.min == 0 else float(info.min)), float(info.max)
    if np.issubdtype(dtype, np.floating):
        return 0.0, 1.0
    raise ValueError(f"dtype {dtype} is not an image's: expected integers, floats or booleans")


def to_hwc(a: np.ndarray, path: Path, axes: str = "") -> np.ndarray:
    """(H, W), (H, W, C) or (C, H, W) -> (H, W, C). The bands are the axis TIFF names S or C, else the first or
    last axis when it is shorter than the other two (a 13-band 256x256 tile either way); otherwise an error."""
    if a.ndim == 2:
        return a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"{path}: an array of shape {a.shape}: expected (H, W), (H, W, C) or (C, H, W)")
    for name in "SC":
        if len(axes) == 3 and name in axes and axes.index(name) in (0, 2):
            return a if axes.index(name) == 2 else a.transpose(1, 2, 0)
    first, last = a.shape[0] < min(a.shape[1:]), a.shape[2] < min(a.shape[:2])
    if first == last:
        raise ValueError(f"{path}: cannot tell which axis of shape {a.shape} holds the bands: store (H, W, C) or "
                         "(C, H, W) with fewer bands than pixels on a side")
    return a.transpose(1, 2, 0) if first else a


def load_numpy(source, suffix: str, path) -> np.ndarray:
    """A .npy array, or the only (or the 'image') array of a .npz (`source`: a path or a file object; `path`
    names it in messages); never a pickle."""
    if suffix == ".npy":
        return np.load(source, allow_pickle=False)
    with np.load(source, allow_pickle=False) as z:
        keys = list(z.keys())
        if len(keys) != 1 and "image" not in keys:
            raise ValueError(f"{path}: holds arrays {keys}: expected one array, or one named 'image'")
        return z["image" if "image" in keys else keys[0]]


def read_array(path: str | Path) -> np.ndarray:
    """One file as (H, W, C) in its own dtype: .npy (no pickles), .npz (its only array, or the one named
    'image'), TIFF (tifffile: any band count and dtype), other images through PIL (8-bit, or 16-bit grayscale)."""
    suffix, axes = Path(getattr(path, "source", str(path))).suffix.lower(), ""  # a packed item: its source's
    source = opened(path) if isinstance(path, str) else Path(path)  # a packed item gives its bytes
    if suffix in (".npy", ".npz"):
        try:
            a = load_numpy(source, suffix, path)
        except ValueError as e:
            if "allow_pickle" in str(e):
                raise ValueError(f"{path}: holds Python objects (a pickle): only numeric arrays are read, since "
                                 "loading a pickle can run code") from None
            raise
    elif suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(source) as tif:
            series = tif.series[0]
            axes, a = series.axes, series.asarray()
    else:
        from PIL import Image

        with Image.open(source) as im:
            a = np.asarray(im)
    if a.dtype.kind not in "buif":
        raise ValueError(f"{path}: dtype {a.dtype}: expected integers, floats or booleans")
    return to_hwc(a, path, axes)


def inspect_array(path: Path) -> dict:
    """Read a file fully once: {"error": None or why it cannot be read, "size": (w, h), "channels", "dtype",
    "min", "max" (over all bands), "band_min", "band_max"}; NaN or infinite values are an error."""
    if path.stat().st_size == 0:
        return {"error": "zero-byte file"}
    try:
        a = read_array(path)
    except Exception as e:  # OSError, ValueError, zipfile.BadZipFile, tifffile's TiffFileError, ...
        return {"error": f"{type(e).__name__}: {e}"}
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        return {"error": f"{int((~np.isfinite(a)).sum())} NaN or infinite values"}
    lo, hi = a.reshape(-1, a.shape[2]).min(0), a.reshape(-1, a.shape[2]).max(0)  # per band
    return {"error": None, "size": (a.shape[1], a.shape[0]), "channels": a.shape[2], "dtype": str(a.dtype),
            "min": float(lo.min()), "max": float(hi.max()), "band_min": lo.tolist(), "band_max": hi.tolist()}


def select_bands(a: np.ndarray, bands: Optional[Sequence[int]], path: Path | str = "") -> np.ndarray:
    """The channels `bands` (numbered from 1) of (H, W, C); all of them for None."""
    if bands is None:
        return a
    bad = [b for b in bands if not 1 <= b <= a.shape[2]]
    if bad:
        raise ValueError(f"{path}: data.bands {list(bands)} asks for band {bad[0]}, but the file has {a.shape[2]} "
                         "band(s), numbered from 1")
    return a[:, :, [b - 1 for b in bands]]


@dataclass(frozen=True)
class DataRange:
    """Per-channel (lo, hi) that map to (0, 1), and the dtype and file format the data came in."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    dtype: str = "float32"
    format: str = "tif"  # tif | npy: what dff sample writes
    bands: Optional[tuple[int, ...]] = None  # the files' bands the model was trained on (numbered from 1; None: all)

    def __post_init__(self):
        if len(self.low) != len(self.high) or not self.low:
            raise ValueError(f"data range: {len(self.low)} low and {len(self.high)} high values, expected one pair "
                             "per channel")
        bad = [i for i, (lo, hi) in enumerate(zip(self.low, self.high)) if not hi > lo]
        if bad:
            i = bad[0]
            raise ValueError(f"data range of channel {i + 1}: low {self.low[i]} must be below high {self.high[i]}")

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> Optional["DataRange"]:
        if d is None:
            return None
        bands = None if d.get("bands") is None else tuple(int(b) for b in d["bands"])
        return cls(tuple(map(float, d["low"])), tuple(map(float, d["high"])), str(d.get("dtype", "float32")),
                   str(d.get("format", "tif")), bands)

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def channels(self) -> int:
        return len(self.low)

    def _lo_hi(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (-1, 1, 1)  # broadcast over (..., C, H, W)
        lo = torch.tensor(self.low, dtype=torch.float64, device=x.device).view(shape)
        hi = torch.tensor(self.high, dtype=torch.float64, device=x.device).view(shape)
        return lo, hi

    def to_unit(self, a: torch.Tensor) -> torch.Tensor:
        """Data units (..., C, H, W) -> [0, 1]: (a - lo) / (hi - lo), clipped."""
        lo, hi = self._lo_hi(a)
        return ((a.double() - lo) / (hi - lo)).clamp(0, 1).float()

    def from_unit(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] (..., C, H, W) -> data units, float64: lo + x (hi - lo)."""
        lo, hi = self._lo_hi(x)
        return lo + x.double().clamp(0, 1) * (hi - lo)

    def read(self, path: Path) -> torch.Tensor:
        """A file of this data (its bands picked) as (C, H, W) in [0, 1]."""
        a = select_bands(read_array(path), self.bands, path)
        if a.shape[2] != self.channels:
            raise ValueError(f"{path}: {a.shape[2]} band(s), expected {self.channels} (the bands of the training "
                             "data)")
        return array_to_tensor(a, self)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        """[0, 1] (..., C, H, W) -> data units in the data's dtype (integers rounded and kept in their range)."""
        a = self.from_unit(x).cpu().numpy()
        dtype = np.dtype(self.dtype)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            a = np.clip(np.rint(a), info.min, info.max)
        return a.astype(dtype)


def percentile_range(files: Sequence[Path], bands: Optional[Sequence[int]] = None,
                     q: tuple[float, float] = PERCENTILES, max_files: int = STAT_FILES,
                     max_values: int = STAT_VALUES) -> tuple[list[float], list[float]]:
    """Per-channel q[0]th and q[1]th percentiles (numpy's linear interpolation) of the values of up to
    max_files files (evenly spread over the sorted list, so the same files every time), each subsampled
    evenly to keep about max_values values per channel in all."""
    if not 0 <= q[0] < q[1] <= 100:
        raise ValueError(f"percentiles {list(q)}: expected 0 <= low < high <= 100")
    picked = [files[i] for i in np.linspace(0, len(files) - 1, min(max_files, len(files))).round().astype(int)]
    per_file = max(1, max_values // len(picked))
    values = []
    for p in picked:
        try:
            a = select_bands(read_array(p), bands, p)
        except Exception:  # unreadable files are named by the folder's check (and left out with on_bad_file: skip)
            continue
        flat = a.reshape(-1, a.shape[2])  # (H W, C)
        step = max(1, len(flat) // per_file)
        values.append(flat[::step].astype(np.float64))
    if not values:
        raise ValueError(f"none of {len(picked)} file(s) could be read to measure the percentiles, e.g. {picked[0]}")
    if len({v.shape[1] for v in values}) > 1:
        raise ValueError(f"the files have different band counts {sorted({v.shape[1] for v in values})}: pick "
                         "common ones with data.bands")
    v = np.concatenate(values)  # (N, C)
    lo, hi = np.percentile(v, q[0], axis=0), np.percentile(v, q[1], axis=0)
    hi = np.where(hi > lo, hi, lo + 1.0)  # a constant channel: any scale keeps it constant
    return lo.tolist(), hi.tolist()


def array_to_tensor(a: np.ndarray, data_range: DataRange) -> torch.Tensor:
    """(H, W, C) in data units -> (C, H, W) in [0, 1]."""
    return data_range.to_unit(torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))))


def write_array(x: torch.Tensor, path: Path, data_range: DataRange) -> Path:
    """One image (C, H, W) in [0, 1] as the file path + .tif or .npy in the data's units and dtype: TIFF (C, H, W
    planar, as GDAL writes bands) or .npy (H, W, C)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = data_range.to_numpy(x)  # (C, H, W)
    if data_range.format == "npy":
        path = path.parent / (path.name + ".npy")
        np.save(path, a.transpose(1, 2, 0))
    else:
        import tifffile

        path = path.parent / (path.name + ".tif")
        tifffile.imwrite(path, a, photometric="minisblack", planarconfig="separate")
    return path


def transform_tensor(x: torch.Tensor, size: int, crop: str, *, hflip: bool, vflip: bool,
                     rng: random.Random) -> torch.Tensor:
    """folder.transform_same for a (C, H, W) tensor of any channel count: crop (or resize: the shorter side to
    size, bicubic with antialiasing, then the centre) to size x size, then flip; the same draws from rng."""
    if crop == "resize":
        h, w = x.shape[-2:]
        scale = size / min(w, h)
        new = (max(size, round(h * scale)), max(size, round(w * scale)))
        x = F.interpolate(x[None], size=new, mode="bicubic", antialias=True, align_corners=False)[0]
    left, top, right, bottom = crop_box(x.shape[-1], x.shape[-2], size, "center" if crop == "resize" else crop, rng)
    x = x[:, top:bottom, left:right]
    if hflip and rng.random() < 0.5:
        x = x.flip(-1)
    if vflip and rng.random() < 0.5:
        x = x.flip(-2)
    return x.contiguous()


def inspect_bands(path: Path, channels: int, bands: Optional[tuple[int, ...]] = None) -> dict:
    """inspect_array, with files of too few bands (or the wrong count, without data.bands) as errors."""
    info = inspect_array(path)
    if info["error"]:
        return info
    c = info["channels"]
    if bands is None and c != channels:
        info["error"] = f"{c} band(s), expected data.channels={channels} (or pick some with data.bands)"
    elif bands is not None and max(bands) > c:
        info["error"] = f"{c} band(s), but data.bands asks for band {max(bands)}"
    return info


class ArrayFolder(ImageFolder):
    """Arrays and multiband files below `root` (TIFF, .npy, .npz, and images through PIL) as (C, size, size)
    tensors in [0, 1], by a per-channel DataRange; `bands` picks channels (numbered from 1)."""

    extensions = ARRAY_EXTENSIONS + tuple(e for e in IMAGE_EXTENSIONS if e not in ARRAY_EXTENSIONS)
    unreadable = "could not be decoded (corrupt or truncated) or do not hold the bands asked for"

    def __init__(self, root: str | Path, image_size: int, channels: int, *, data_range: DataRange,
                 bands: Optional[Sequence[int]] = None, **kwargs):
        if kwargs.get("half") is not None:
            raise ValueError("array files are read whole: data.half is for pix2pix side-by-side images")
        self.bands = None if bands is None else list(bands)
        if self.bands is not None and len(self.bands) != channels:
            raise ValueError(f"data.bands {self.bands} picks {len(self.bands)} band(s), but data.channels={channels}")
        if data_range.channels != channels:
            raise ValueError(f"the data range has {data_range.channels} channel(s), data.channels={channels}")
        self.data_range = data_range
        super().__init__(root, image_size, channels, **kwargs)

    def check_channels(self, channels: int) -> None:
        if not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"data.channels={channels}: expected 1 to {MAX_CHANNELS}")

    def inspector(self) -> Callable[[Path], dict]:
        return partial(inspect_bands, channels=self.channels, bands=None if self.bands is None else tuple(self.bands))

    def load(self, path: Path, rng: random.Random) -> torch.Tensor:
        x = array_to_tensor(select_bands(read_array(path), self.bands, path), self.data_range)  # (C, H, W)
        return transform_tensor(x, self.image_size, self.crop, hflip=self.hflip, vflip=self.vflip, rng=rng)


def holds_arrays(root: str | Path) -> bool:
    """Whether a folder is array data (data.reader auto): it holds .npy / .npz files or TIFFs of more than 8 bits
    per sample (the first TIFF's header is read; 16-bit RGB then keeps its precision, which PIL would round to 8
    bits), and no images that only PIL reads (PNG, JPEG, ...), so that a stray array in a folder of photos changes
    nothing."""
    root = Path(root)
    if not root.is_dir():
        return False
    suffixes = {p.suffix.lower(): p for p in sorted(walk_files(root), reverse=True)}  # the first file of each
    if any(e in suffixes for e in IMAGE_EXTENSIONS if e not in ARRAY_EXTENSIONS):
        return False
    if ".npy" in suffixes or ".npz" in suffixes:
        return True
    tifs = sorted(suffixes[e] for e in (".tif", ".tiff") if e in suffixes)
    if not tifs:
        return False
    import tifffile

    try:
        with tifffile.TiffFile(tifs[0]) as tif:
            return tif.series[0].dtype != np.uint8
    except Exception:  # unreadable: the images' check names it
        return False


def measure_range(files: Sequence[Path], channels: int, *, bands: Optional[Sequence[int]] = None,
                  normalize: str = "dtype", percentiles: tuple[float, float] = PERCENTILES,
                  value_range: Optional[Sequence] = None) -> DataRange:
    """The DataRange of a folder's files: from value_range, the percentiles, or the first readable file's dtype."""
    first, readable = None, []
    for p in files:
        try:
            a = select_bands(read_array(p), bands, p)
        except Exception:  # unreadable files are named by the folder's check (and left out with on_bad_file: skip)
            continue
        first = a if first is None else first
        readable.append(p)
        break
    if first is None:
        raise ValueError(f"none of {len(files)} file(s) could be read as arrays, e.g. {files[0] if files else '-'}")
    fmt = "npy" if readable[0].suffix.lower() in (".npy", ".npz") else "tif"
    dtype = str(first.dtype) if first.dtype != np.bool_ else "uint8"
    if value_range is not None:
        if len(value_range) != 2:
            raise ValueError(f"data.value_range {list(value_range)}: expected [low, high]")
        lo, hi = ([float(v)] * channels if np.isscalar(v) else [float(u) for u in v] for v in value_range)
        if len(lo) != channels or len(hi) != channels:
            raise ValueError(f"data.value_range: {len(lo)} low and {len(hi)} high value(s) for {channels} channel(s)")
    elif normalize == "percentile":
        lo, hi = percentile_range(files, bands, percentiles)
    elif normalize == "dtype":
        lo, hi = ([v] * channels for v in dtype_range(first.dtype))
        if first.dtype.kind == "f" and (first.min() < 0 or first.max() > 1):
            raise ValueError(f"{readable[0]}: float values in [{first.min():.4g}, {first.max():.4g}], but "
                             "data.normalize dtype maps floats by [0, 1] and would clip them: set data.normalize "
                             "percentile or data.value_range [low, high]")
    else:
        raise ValueError(f"unknown data.normalize {normalize!r}: expected 'dtype' or 'percentile'")
    if first.shape[2] != channels:
        raise ValueError(f"{readable[0]}: {first.shape[2]} band(s), expected data.channels={channels}")
    return DataRange(tuple(lo), tuple(hi), dtype, fmt, None if bands is None else tuple(bands))
