"""Solutions of the exercises of notebooks/04_latent.py (the format: see 02_pixel.py here)."""

# %% exercise latent_scale
# Exercise latent_scale: s = 1 / (standard deviation of all the latents' elements)
def latent_scale_by_hand(z):
    """z: latents (N, c, h, w), unscaled. Returns s as a float or a 0-d tensor."""
    return 1 / z.float().std()  # one number over every element: around the mean, not the root mean square
