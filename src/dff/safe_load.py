"""Reading files a user may have downloaded without running code: tensors only.

`torch.load(weights_only=True)` refuses a pickle that names anything but tensors and plain
containers (a crafted checkpoint could otherwise run any code when unpickled); `refusal` turns its
long message into one line that names the file and what it tried to load.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Union

import torch


def refusal(path: Union[str, Path], error: Exception) -> str:
    """One line for a file torch.load(weights_only=True) refused."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    what = f" ({found.group(1)})" if found else ""
    return (f"{path}: refused: it holds Python objects besides tensors{what}, which could run code when loaded; "
            "dff reads weights only. Load it only if it comes from a source you trust.")


def load_tensors(path: Union[str, Path]) -> Any:
    """torch.load(path, weights_only=True) on the CPU; ValueError (one line) for a file that is not a
    tensor pickle, or that names other Python objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(refusal(path, e)) from None
    except (RuntimeError, EOFError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot be read as a torch file ({type(e).__name__}: {str(e).splitlines()[0]}); "
                         "truncated or not a checkpoint?") from None
