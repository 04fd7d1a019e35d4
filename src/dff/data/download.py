"""Download a pix2pix paired-image data set and unpack it into `dest/NAME`, all or nothing.

The archives come from the pix2pix authors' public server (`PIX2PIX_URL`, or the `DFF_PIX2PIX_URL`
environment variable for a mirror). Each archive is streamed with urllib into a hidden temporary file
inside `dest`, its size checked against the server's Content-Length (a dropped connection otherwise
leaves a silently truncated archive), optionally its SHA-256, then unpacked with tarfile's "data"
filter (no absolute paths, no links out of the folder) into a hidden temporary folder that is renamed
to `dest/NAME` only once everything succeeded. An existing non-empty `dest/NAME` is never touched.

On any failure the temporary file and folder are removed, so `dest` holds exactly what it held before,
and the error names the URL and what was expected. On success the archive is deleted as well.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import BinaryIO, Optional

from tqdm import tqdm

PIX2PIX_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/"
URL_ENV = "DFF_PIX2PIX_URL"
CHUNK = 1 << 20  # bytes read per network call

# name -> one line; every image is an input|target pair side by side (A left, B right)
PIX2PIX: dict[str, str] = {
    "facades": "400 train / 100 val / 106 test label|photo pairs of building facades (CMP Facades), 256x256 each side",
    "cityscapes": "2975 train / 500 val photo|label pairs of street scenes (Cityscapes), 256x256 each side",
    "maps": "1096 train / 1098 val satellite|map pairs scraped from Google Maps, 600x600 each side",
    "edges2shoes": "~50k train / 200 val edge|photo pairs of shoes (UT Zappos50K), 256x256 each side",
    "edges2handbags": "~137k train / 200 val edge|photo pairs of handbags (Amazon, from iGAN), 256x256 each side",
    "night2day": "~20k night|day pairs of outdoor scenes (Transient Attributes), 256x256 each side",
}


def dataset_url(name: str, base_url: Optional[str] = None) -> str:
    """URL of `name`.tar.gz under base_url, else $DFF_PIX2PIX_URL, else the authors' server."""
    base = base_url or os.environ.get(URL_ENV) or PIX2PIX_URL
    return f"{base.rstrip('/')}/{name}.tar.gz"


def _by_hand(url: str, dest: Path) -> str:
    return f"check the connection, or download {url} by hand and extract it into {str(dest)!r}"


def _check_target(target: Path) -> None:
    """Refuse to touch anything already at `target` (an empty folder is fine)."""
    if target.is_dir() and not any(target.iterdir()):
        return
    if target.exists() or target.is_symlink():
        raise FileExistsError(
            f"{str(target)!r} already exists and is not empty; remove or rename it to download again "
            "(existing files are never overwritten)"
        )


def _open(url: str, dest: Path, timeout: float) -> http.client.HTTPResponse:
    """urlopen with network and HTTP errors turned into a ConnectionError naming the URL."""
    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        raise ConnectionError(f"could not download {url}: HTTP {e.code} {e.reason}; {_by_hand(url, dest)}") from e
    except (urllib.error.URLError, OSError) as e:  # refused, DNS, timeout (socket.timeout is an OSError)
        reason = getattr(e, "reason", e)
        raise ConnectionError(f"could not download {url}: {reason}; {_by_hand(url, dest)}") from e


def _content_length(resp: http.client.HTTPResponse) -> Optional[int]:
    try:
        return int(resp.headers["Content-Length"])
    except (TypeError, ValueError):
        return None


def _truncated(got: int, expected: Optional[int], url: str, dest: Path) -> ValueError:
    return ValueError(f"truncated download: got {got} of {expected} bytes from {url}; {_by_hand(url, dest)}")


def _stream(resp: http.client.HTTPResponse, out: BinaryIO, url: str, dest: Path, progress: bool, desc: str) -> str:
    """Copy the response body to `out` in chunks, checking its length; returns its SHA-256 hex digest."""
    expected, got, digest = _content_length(resp), 0, hashlib.sha256()
    with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not progress) as bar:
        while True:
            try:
                chunk = resp.read(CHUNK)
            except http.client.IncompleteRead as e:
                raise _truncated(got + len(e.partial), expected, url, dest) from e
            except OSError as e:  # reset connection, read timeout
                raise ConnectionError(f"download of {url} failed after {got} bytes: {e}; {_by_hand(url, dest)}") from e
            if not chunk:
                break
            out.write(chunk)
            digest.update(chunk)
            got += len(chunk)
            bar.update(len(chunk))
    if expected is not None and got != expected:
        raise _truncated(got, expected, url, dest)
    return digest.hexdigest()


def _fetch(url: str, part: Path, dest: Path, progress: bool, timeout: float, desc: str) -> str:
    """Download url into the file `part`; returns the SHA-256 of what was received."""
    with _open(url, dest, timeout) as resp, open(part, "wb") as out:
        return _stream(resp, out, url, dest, progress, desc)


def _check_sha256(actual: str, expected: Optional[str], url: str) -> None:
    if expected is not None and actual != expected.strip().lower():
        raise ValueError(f"checksum mismatch for {url}: expected sha256 {expected.strip().lower()}, got {actual}")


class UnsafeMemberError(tarfile.TarError):
    """An archive member that would land outside the extraction folder (fallback check)."""


def _safe_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Fallback for Pythons without extraction filters: plain files and folders inside the archive only."""
    for m in tar.getmembers():
        parts = Path(m.name).parts
        if m.name.startswith(("/", "\\")) or ".." in parts or not (m.isfile() or m.isdir()):
            raise UnsafeMemberError(f"unsafe or unsupported archive member {m.name!r}")
    return tar.getmembers()


def _extract(archive: Path, into: Path, url: str) -> None:
    """Unpack the tar.gz archive into the folder `into`; a ValueError naming the URL if it is corrupt or unsafe."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(into, filter="data")
            else:  # Python < 3.10.12 / 3.11.4
                tar.extractall(into, members=_safe_members(tar))
    except (UnsafeMemberError, getattr(tarfile, "FilterError", UnsafeMemberError)) as e:
        raise ValueError(
            f"refused to extract the archive from {url}: {e}; members must stay inside the folder "
            "(no absolute paths, '..' or links pointing out)"
        ) from e
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:  # disk errors pass through unchanged
        raise ValueError(
            f"could not extract the archive from {url}: {type(e).__name__}: {e}; expected a valid tar.gz "
            "archive (the download may be corrupt, or the server sent something else)"
        ) from e


def _unpacked_root(folder: Path, url: str) -> Path:
    """The archive's single top-level folder if it has exactly one, else the folder itself."""
    entries = list(folder.iterdir())
    if not entries:
        raise ValueError(f"the archive from {url} is empty")
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return folder


def _cleanup(*paths: Optional[Path]) -> None:
    for p in paths:
        if p is None:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def download(
    name: str,
    dest: str | Path = "data",
    *,
    base_url: Optional[str] = None,  # folder holding NAME.tar.gz; default $DFF_PIX2PIX_URL, else PIX2PIX_URL
    sha256: Optional[str] = None,  # expected SHA-256 of the archive (hex); None: size check only
    progress: bool = True,  # tqdm progress bar on stderr
    timeout: float = 60,  # seconds for connecting and for each read
) -> Path:
    """Download the pix2pix data set `name` and unpack it into `dest/name`, which is returned."""
    if name not in PIX2PIX:
        raise ValueError(f"unknown data set {name!r}: expected one of {', '.join(PIX2PIX)}")
    dest = Path(dest)
    target = dest / name
    _check_target(target)
    url = dataset_url(name, base_url)
    created_dest = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    part: Optional[Path] = None
    tmp: Optional[Path] = None
    try:
        fd, part_name = tempfile.mkstemp(prefix=f".{name}.tar.gz.", suffix=".part", dir=dest)
        os.close(fd)
        part = Path(part_name)
        _check_sha256(_fetch(url, part, dest, progress, timeout, desc=name), sha256, url)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=dest))
        _extract(part, tmp, url)
        _check_target(target)  # another process may have created it meanwhile
        if target.is_dir():
            target.rmdir()  # empty (checked above); a rename onto it would fail on Windows
        os.rename(_unpacked_root(tmp, url), target)
    except BaseException:
        _cleanup(part, tmp)
        if created_dest:
            try:
                dest.rmdir()  # only if it is still empty
            except OSError:
                pass
        raise
    _cleanup(part, tmp)
    return target
