"""Data: image folders, the built-in digits, and the DataModule that batches them."""
from .builtin import DigitsDataset, load_digits_tensor
from .datamodule import ImageDataModule
from .folder import IMAGE_EXTENSIONS, ImageFolder, find_images

__all__ = ["ImageDataModule", "ImageFolder", "DigitsDataset", "load_digits_tensor", "find_images", "IMAGE_EXTENSIONS"]
