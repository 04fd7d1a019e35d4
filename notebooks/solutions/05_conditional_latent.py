"""Solutions of the exercises of notebooks/05_conditional_latent.py (the format: see 02_pixel.py here)."""

# %% exercise resize_code
# Exercise resize_code: the 'resize' condition code of a latent model
def resize_code(cond, f):
    """cond: condition images (B, C, H, W) in [0, 1], H and W multiples of f; f: the autoencoder's down-sampling
    factor. Returns the 'resize' condition code (B, C, H/f, W/f) of note 05 (its equation for 'resize')."""
    c = 2 * cond - 1  # the model's range [-1, 1], as the latents and every other input of the network
    return torch.nn.functional.avg_pool2d(c, f)  # the mean of each f x f block: one latent pixel's worth
