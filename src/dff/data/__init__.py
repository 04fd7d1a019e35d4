"""Data: image folders, the built-in digits, and the DataModule that batches them. ImageDataModule (Lightning) is
imported on first use, so that the data's files (tasks, folders) can be used without Lightning."""
from .builtin import DigitsDataset, load_digits_tensor
from .folder import IMAGE_EXTENSIONS, ImageFolder, find_images

__all__ = ["ImageDataModule", "ImageFolder", "DigitsDataset", "load_digits_tensor", "find_images", "IMAGE_EXTENSIONS"]


def __getattr__(name: str):
    if name == "ImageDataModule":
        from .datamodule import ImageDataModule

        return ImageDataModule
    raise AttributeError(f"module 'dff.data' has no attribute {name!r}")
