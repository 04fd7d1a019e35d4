"""Evaluation of generated images: FID and KID with a pluggable feature extractor."""
from .features import DigitsFeatures, InceptionFeatures, TextureFeatures, get_extractor
from .fid import compute_features, evaluate_generation, fid_from_features, kid_from_features, load_image_folder

__all__ = ["DigitsFeatures", "InceptionFeatures", "TextureFeatures", "get_extractor", "compute_features",
           "evaluate_generation", "fid_from_features", "kid_from_features", "load_image_folder"]
