"""Files written whole or not at all, and output folders that never overwrite what the user had."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union


@contextmanager
def atomic_folder(folder: Union[str, Path]) -> Iterator[Path]:
    """Write a folder's files into FOLDER.partial, then swap it in for FOLDER: readers see the old
    folder or the new one, never half of one; an error while writing leaves the old folder as it was."""
    folder = Path(folder)
    partial, old = folder.with_name(folder.name + ".partial"), folder.with_name(folder.name + ".old")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        partial.rename(folder)
        shutil.rmtree(old)
    else:
        partial.rename(folder)


def usual_mode(path: Union[str, Path]) -> Path:
    """Give a file the permissions a new file gets here (0666 less the umask): safetensors writes 0600, which would
    keep an export from the other users of a shared machine."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
    return Path(path)


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a file as an output folder, or a folder that already holds files unless overwrite: nothing the
    user had is overwritten silently (`dff sample`, `translate`, `explore`)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; expected a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"output folder {out} already holds files; choose another --out or pass --overwrite")
