"""The condition of an image-to-image model, described once: what the data gives, what the model takes.

    kind      none | image (a given image: pix2pix pairs) | sr2 | sr4 | colorize | inpaint (made from the input)
    channels  C_cond, the condition image's channels (0 for none)

The data derive it from their settings (`Condition.of_data(pairs, channels, cond_image_channels)`); `dff fit`
links it into the model's `condition` / `cond_channels` keys (the names of the checkpoints and exports), and
`DiffusionModel.condition` gives it back. How the condition becomes the network's input (the "condition
code": the image in [-1, 1], or, for latent models, its latent or the image resized to the latent size) is the
model's own business (models/latent_space.py). Class labels are the other condition: `model.num_classes`,
with labelled data (`data.labels`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .tasks import TASKS, cond_channels as task_cond_channels

KINDS: tuple[str, ...] = ("none", "image", *TASKS)
GIVEN_LAYOUTS: tuple[str, ...] = ("side_by_side", "folders")  # data.pairs that read the condition from files


@dataclass(frozen=True)
class Condition:
    """What a model is conditioned on: the condition's kind and the channels of its image."""

    kind: str = "none"
    channels: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown condition {self.kind!r}: expected one of {', '.join(KINDS)}")
        if (self.channels > 0) != (self.kind != "none"):
            raise ValueError(f"cond_channels={self.channels} and condition={self.kind!r} disagree: a conditional "
                             "model needs both (cond_channels > 0 and condition != 'none'), an unconditional neither")

    @classmethod
    def of_data(cls, pairs: str, channels: int, cond_image_channels: Optional[int] = None) -> "Condition":
        """The condition that data.pairs gives for `channels`-channel images: none; a given image (its channels
        are cond_image_channels, by default the images'); or a task's, made from the image (tasks.py)."""
        if pairs == "none":
            return cls()
        if pairs in GIVEN_LAYOUTS:
            return cls("image", channels if cond_image_channels is None else cond_image_channels)
        if pairs == "colorize" and channels != 3:
            raise ValueError(f"data.pairs='colorize' turns grey images into RGB: it needs data.channels=3, got "
                             f"{channels}")
        return cls(pairs, task_cond_channels(pairs, channels))

    @property
    def is_task(self) -> bool:
        """Made from the input image (sr2, sr4, colorize, inpaint), so a translation needs no second file."""
        return self.kind in TASKS

    def __bool__(self) -> bool:
        return self.kind != "none"

    def __str__(self) -> str:
        return "none" if not self else f"{self.kind} ({self.channels} channels)"


def condition_kind(pairs: str, channels: int = 3, cond_image_channels: Optional[int] = None) -> str:
    """model.condition for data.pairs (`dff fit` links it)."""
    return Condition.of_data(pairs, channels, cond_image_channels).kind


def condition_channels(pairs: str, channels: int, cond_image_channels: Optional[int] = None) -> int:
    """model.cond_channels for data.pairs, data.channels and data.cond_image_channels (`dff fit` links it)."""
    return Condition.of_data(pairs, channels, cond_image_channels).channels
