"""dff, DiffusionFastForward: train diffusion models on new kinds of image data and sample from them."""
__version__ = "0.1.0"
