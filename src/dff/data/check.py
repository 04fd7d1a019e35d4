"""`dff data check PATH`: what training would make of an image folder, before it starts.

Each file is decoded once (as training does) and sorted into findings. Those that stop training:
files that cannot be decoded (corrupt, truncated, not an image, over PIL's decompression-bomb limit),
zero-byte files, images smaller than the training size (crop random or center), unpaired files of an
A/B layout and odd-width side-by-side files. Those that train, but deserve a look: grayscale images of
more than 8 bits (16-bit, float; read at full precision), palette images, CMYK, LA, EXIF-rotated
photos (trained as stored, not as a viewer shows them), images above PIL's decompression-bomb warning
limit, and images that crop: resize would upscale.

A folder of arrays (.npy / .npz, or TIFFs of more than 8 bits: data/arrays.py) is read as training reads it,
and the report adds what normalisation needs: the band counts, dtypes and value ranges (per band), with a note
when the values use a small part of their dtype's range (a 12-bit sensor in 16-bit files).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Optional

from .arrays import ARRAY_EXTENSIONS, dtype_range, holds_arrays, inspect_array
from .folder import HIGH_DEPTH, IMAGE_EXTENSIONS, find_images, inspect_image
from .paired import match_stems

STOPS = ("undecodable", "zero-byte", "too small", "unpaired", "odd width")
NOTES = {
    "high bit depth": "16-bit or float grayscale: read at full precision with data.channels 1, "
                      "rounded to 8 bits otherwise",
    "palette": "palette image: converted to grayscale/RGB(A) by its palette",
    "CMYK": "CMYK: converted to RGB by PIL (colours may shift)",
    "LA": "grayscale with alpha: the alpha channel is dropped unless data.channels is 4",
    "EXIF-rotated": "EXIF orientation set: turned upright for training, as a photo viewer shows it "
                    "(data.exif_orientation: false keeps them as stored)",
    "very large": "above PIL's decompression-bomb warning limit (89 M pixels)",
    "upscaled": "smaller than the training size: crop resize upscales it",
    "narrow range": "values fill under 1/8 of their dtype's range: with data.normalize dtype they would use a "
                    "sliver of [0, 1]; give data.value_range (e.g. [0, 4095] for 12-bit data) or data.normalize "
                    "percentile",
    "band counts differ": "files with different band counts: pick common bands with data.bands",
}


def check_folder(root: str | Path, image_size: Optional[int] = None, crop: str = "random",
                 pairs: str = "none") -> dict[str, list[str]]:
    """{finding: ["path: detail", ...]} for every image below root (pairs: none | side_by_side | folders)."""
    root = Path(root)
    if pairs == "none" and holds_arrays(root):
        return check_arrays(root, image_size, crop)
    found: dict[str, list[str]] = defaultdict(list)
    files = find_images(root)
    if pairs == "folders":
        try:
            match_stems(root)
        except ValueError as e:  # lists the files without a partner
            found["unpaired"] += [line.strip() for line in str(e).splitlines()[1:]]
    for p in files:
        info = inspect_image(p)
        if info["error"] == "zero-byte file":
            found["zero-byte"].append(str(p))
            continue
        if info["error"]:
            found["undecodable"].append(f"{p}: {info['error']}")
            continue
        w, h = info["size"]
        if pairs == "side_by_side":
            if w % 2:
                found["odd width"].append(f"{p}: {w}x{h}")
            w //= 2
        if image_size and min(w, h) < image_size:
            found["upscaled" if crop == "resize" else "too small"].append(f"{p}: {w}x{h}")
        mode = info["mode"]
        if mode in HIGH_DEPTH:
            found["high bit depth"].append(f"{p}: mode {mode}")
        elif mode in ("P", "CMYK", "LA"):
            found["palette" if mode == "P" else mode].append(f"{p}: mode {mode}")
        if info["orientation"] != 1:
            found["EXIF-rotated"].append(f"{p}: orientation {info['orientation']}")
        if info["bomb"]:
            found["very large"].append(f"{p}: {w}x{h}")
    found["files"] = [str(p) for p in files]
    return dict(found)


def check_arrays(root: Path, image_size: Optional[int] = None, crop: str = "random") -> dict[str, list[str]]:
    """check_folder for a folder of arrays: each file read once as training reads it (data/arrays.py)."""
    found: dict[str, list[str]] = defaultdict(list)
    files = find_images(root, ARRAY_EXTENSIONS + tuple(e for e in IMAGE_EXTENSIONS if e not in ARRAY_EXTENSIONS))
    bands, dtypes, lo, hi = defaultdict(int), defaultdict(int), {}, {}  # band count -> files; dtype -> files; ranges
    for p in files:
        info = inspect_array(p)
        if info["error"]:
            found["zero-byte" if info["error"] == "zero-byte file" else "undecodable"].append(f"{p}: {info['error']}")
            continue
        w, h = info["size"]
        if image_size and min(w, h) < image_size:
            found["upscaled" if crop == "resize" else "too small"].append(f"{p}: {w}x{h}")
        bands[info["channels"]] += 1
        dtypes[info["dtype"]] += 1
        for b, (a, z) in enumerate(zip(info["band_min"], info["band_max"])):
            lo[b], hi[b] = min(lo.get(b, a), a), max(hi.get(b, z), z)
        d_lo, d_hi = dtype_range(info["dtype"])
        if info["dtype"] not in ("uint8", "bool") and info["max"] - min(info["min"], d_lo) < (d_hi - d_lo) / 8:
            found["narrow range"].append(f"{p}: {info['dtype']} values {info['min']:g}..{info['max']:g}")
    if len(bands) > 1:
        found["band counts differ"] = [f"{n} file(s) of {c} band(s)" for c, n in sorted(bands.items())]
    found["summary"] = [f"arrays: {', '.join(f'{n} file(s) of {c} band(s)' for c, n in sorted(bands.items()))}; "
                        f"dtype {', '.join(f'{d} ({n})' for d, n in sorted(dtypes.items()))}"]
    found["summary"] += [f"band {b + 1}: {lo[b]:g} .. {hi[b]:g}" for b in sorted(lo)[:16]]
    if len(lo) > 16:
        found["summary"].append(f"... and {len(lo) - 16} more bands")
    found["files"] = [str(p) for p in files]
    return dict(found)


def report(found: dict[str, list[str]], examples: int = 10) -> tuple[str, bool]:
    """(the text of the report, whether anything would stop training)."""
    lines = [f"{len(found.get('files', []))} image file(s)"] + [f"  {s}" for s in found.get("summary", [])]
    for key in (*STOPS, *NOTES):
        items = found.get(key, [])
        if not items:
            continue
        why = "stops training" if key in STOPS else NOTES[key]
        lines.append(f"{len(items):6d}  {key} ({why})")
        lines += [f"          {item}" for item in items[:examples]]
        if len(items) > examples:
            lines.append(f"          ... and {len(items) - examples} more")
    stops = sum(len(found.get(k, [])) for k in STOPS)
    lines.append(f"verdict: {stops} file(s) would stop training; fix or remove them" if stops
                 else "verdict: ready to train")
    return "\n".join(lines), stops > 0
