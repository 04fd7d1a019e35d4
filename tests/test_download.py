"""dff.data.download against a local HTTP server: success, truncation, checksums, corrupt archives, 404."""
from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from dff.data.download import PIX2PIX, dataset_url, download

FILES = {"facades/train/1.jpg": b"\xff\xd8 first image", "facades/train/2.jpg": b"\xff\xd8 second image"}


def make_tar_gz(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A tar.gz holding `files` (path -> bytes) and symlinks (path -> link target) in memory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for path, target in (links or {}).items():
            info = tarfile.TarInfo(path)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


GOOD = make_tar_gz(FILES)
ROUTES: dict[str, bytes] = {
    "/good/facades.tar.gz": GOOD,
    "/corrupt/facades.tar.gz": b"this is not a gzip file at all" * 10,
    "/flat/facades.tar.gz": make_tar_gz({"1.jpg": b"a", "2.jpg": b"b"}),
    "/unsafe/facades.tar.gz": make_tar_gz({"facades/1.jpg": b"a"}, links={"facades/evil": "/etc/passwd"}),
    "/dotdot/facades.tar.gz": make_tar_gz({"facades/1.jpg": b"a", "../escaped.jpg": b"b"}),
}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/trunc/facades.tar.gz":  # promises the whole archive, sends half, hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.write(GOOD[: len(GOOD) // 2])
            self.close_connection = True
            return
        if self.path not in ROUTES:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(ROUTES[self.path])))
        self.end_headers()
        self.wfile.write(ROUTES[self.path])

    def log_message(self, *args) -> None:  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Base URL of a local HTTP server serving ROUTES; shut down after the module."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def dest(tmp_path) -> Path:
    """A data folder that already holds a user's file."""
    d = tmp_path / "data"
    d.mkdir()
    (d / "mine.txt").write_text("keep me")
    return d


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_success(server, dest, capsys):
    out = download("facades", dest, base_url=f"{server}/good/", progress=True)
    assert out == dest / "facades"
    for path, data in FILES.items():
        assert (dest / path).read_bytes() == data
    assert listing(dest) == ["facades", "facades/train", "facades/train/1.jpg", "facades/train/2.jpg", "mine.txt"]
    assert capsys.readouterr().out == ""  # only the progress bar, on stderr


def test_creates_dest(server, tmp_path):
    out = download("facades", tmp_path / "new" / "data", base_url=f"{server}/good", progress=False)
    assert (out / "train" / "1.jpg").read_bytes() == FILES["facades/train/1.jpg"]


def test_env_var_base_url(server, dest, monkeypatch):
    monkeypatch.setenv("DFF_PIX2PIX_URL", f"{server}/good/")
    assert dataset_url("maps") == f"{server}/good/maps.tar.gz"
    assert (download("facades", dest, progress=False) / "train" / "2.jpg").exists()


def test_default_url(monkeypatch):
    monkeypatch.delenv("DFF_PIX2PIX_URL", raising=False)
    assert dataset_url("maps") == "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/maps.tar.gz"
    assert set(PIX2PIX) == {"facades", "cityscapes", "maps", "edges2shoes", "edges2handbags", "night2day"}


def test_correct_checksum(server, dest):
    download("facades", dest, base_url=f"{server}/good/", sha256=hashlib.sha256(GOOD).hexdigest().upper(),
             progress=False)
    assert (dest / "facades/train/1.jpg").exists()


def test_checksum_mismatch(server, dest):
    with pytest.raises(ValueError,
                       match=r"checksum mismatch for http://.*/good/facades\.tar\.gz.*expected sha256 0{64}"):
        download("facades", dest, base_url=f"{server}/good/", sha256="0" * 64, progress=False)
    assert listing(dest) == ["mine.txt"]


def test_truncated(server, dest):
    url = f"{server}/trunc/facades.tar.gz"
    with pytest.raises(ValueError, match=rf"truncated download: got {len(GOOD) // 2} of {len(GOOD)} bytes from {url}"):
        download("facades", dest, base_url=f"{server}/trunc/", progress=False)
    assert listing(dest) == ["mine.txt"]


def test_failure_removes_dest_it_created(server, tmp_path):
    with pytest.raises(ValueError, match="truncated download"):
        download("facades", tmp_path / "data", base_url=f"{server}/trunc/", progress=False)
    assert listing(tmp_path) == []


def test_corrupt_archive(server, dest):
    with pytest.raises(ValueError, match=r"could not extract the archive from http://.*/corrupt/facades\.tar\.gz"):
        download("facades", dest, base_url=f"{server}/corrupt/", progress=False)
    assert listing(dest) == ["mine.txt"]


@pytest.mark.parametrize("route", ["unsafe", "dotdot"])
def test_unsafe_archive_refused(server, dest, route):
    with pytest.raises(ValueError, match=rf"refused to extract the archive from http://.*/{route}/facades\.tar\.gz"):
        download("facades", dest, base_url=f"{server}/{route}/", progress=False)
    assert listing(dest) == ["mine.txt"]
    assert not (dest.parent / "escaped.jpg").exists()


@pytest.mark.parametrize("route", ["good", "unsafe", "dotdot"])
def test_without_extraction_filters(server, dest, route, monkeypatch):
    """Pythons before 3.10.12 / 3.11.4 have no tarfile filters: the fallback check refuses the same archives."""
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    if route == "good":
        assert (download("facades", dest, base_url=f"{server}/good/", progress=False) / "train" / "1.jpg").exists()
        return
    with pytest.raises(ValueError, match="refused to extract.*unsafe or unsupported archive member"):
        download("facades", dest, base_url=f"{server}/{route}/", progress=False)
    assert listing(dest) == ["mine.txt"]


def test_archive_without_single_top_folder(server, dest):
    out = download("facades", dest, base_url=f"{server}/flat/", progress=False)
    assert listing(out) == ["1.jpg", "2.jpg"]
    assert listing(dest) == ["facades", "facades/1.jpg", "facades/2.jpg", "mine.txt"]


def test_404(server, dest):
    with pytest.raises(ConnectionError, match=r"could not download http://.*/missing/facades\.tar\.gz: HTTP 404"):
        download("facades", dest, base_url=f"{server}/missing/", progress=False)
    assert listing(dest) == ["mine.txt"]


def test_connection_refused(dest):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match=rf"127\.0\.0\.1:{port}/facades\.tar\.gz.*check the connection"):
        download("facades", dest, base_url=f"http://127.0.0.1:{port}", progress=False, timeout=2)
    assert listing(dest) == ["mine.txt"]


def test_existing_target_untouched(server, dest):
    (dest / "facades").mkdir()
    (dest / "facades" / "old.jpg").write_bytes(b"old")
    with pytest.raises(FileExistsError, match="facades.*already exists"):
        download("facades", dest, base_url=f"{server}/good/", progress=False)
    assert (dest / "facades" / "old.jpg").read_bytes() == b"old"
    assert listing(dest) == ["facades", "facades/old.jpg", "mine.txt"]


def test_empty_target_folder_is_filled(server, dest):
    (dest / "facades").mkdir()
    assert (download("facades", dest, base_url=f"{server}/good/", progress=False) / "train" / "1.jpg").exists()


def test_unknown_name(dest):
    with pytest.raises(ValueError, match=r"unknown data set 'horses'.*facades, cityscapes, maps"):
        download("horses", dest, progress=False)
    assert listing(dest) == ["mine.txt"]


def test_cli_download_and_its_errors(server, dest, capsys):
    from dff.cli import main

    main(["data", "download", "facades", "--dir", str(dest), "--base-url", f"{server}/good/", "--no-progress"])
    assert "extracted facades to" in capsys.readouterr().out and (dest / "facades/train/1.jpg").exists()
    with pytest.raises(SystemExit, match="already exists"):  # never overwritten
        main(["data", "download", "facades", "--dir", str(dest), "--base-url", f"{server}/good/", "--no-progress"])
    with pytest.raises(SystemExit, match="truncated download"):
        main(["data", "download", "facades", "--dir", str(dest / "x"), "--base-url", f"{server}/trunc/",
              "--no-progress"])
    main(["data", "list"])
    assert "maps" in capsys.readouterr().out
