"""`dff data check PATH`: what training would make of an image folder, before it starts.

Each file is decoded once (as training does) and sorted into findings. Those that stop training:
files that cannot be decoded (corrupt, truncated, not an image, over PIL's decompression-bomb limit),
zero-byte files, images smaller than the training size (crop random or center), unpaired files of an
A/B layout and odd-width side-by-side files. Those that train, but deserve a look: grayscale images of
more than 8 bits (16-bit, float; read at full precision), palette images, CMYK, LA, EXIF-rotated
photos (trained as stored, not as a viewer shows them), images above PIL's decompression-bomb warning
limit, and images that crop: resize would upscale.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Optional

from .folder import HIGH_DEPTH, find_images, inspect_image
from .paired import match_stems

STOPS = ("undecodable", "zero-byte", "too small", "unpaired", "odd width")
NOTES = {
    "high bit depth": "16-bit or float grayscale: read at full precision with data.channels 1, "
                      "rounded to 8 bits otherwise",
    "palette": "palette image: converted to grayscale/RGB(A) by its palette",
    "CMYK": "CMYK: converted to RGB by PIL (colours may shift)",
    "LA": "grayscale with alpha: the alpha channel is dropped unless data.channels is 4",
    "EXIF-rotated": "EXIF orientation set: trained as stored, not as a photo viewer shows it",
    "very large": "above PIL's decompression-bomb warning limit (89 M pixels)",
    "upscaled": "smaller than the training size: crop resize upscales it",
}


def check_folder(root: str | Path, image_size: Optional[int] = None, crop: str = "random",
                 pairs: str = "none") -> dict[str, list[str]]:
    """{finding: ["path: detail", ...]} for every image below root (pairs: none | side_by_side | folders)."""
    root = Path(root)
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


def report(found: dict[str, list[str]], examples: int = 10) -> tuple[str, bool]:
    """(the text of the report, whether anything would stop training)."""
    lines = [f"{len(found.get('files', []))} image file(s)"]
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
