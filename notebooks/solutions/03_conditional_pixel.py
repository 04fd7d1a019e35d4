"""Solutions of the exercises of notebooks/03_conditional_pixel.py (the format: see 02_pixel.py here)."""

# %% exercise psnr
# Exercise psnr: the mean over the batch of 10 log10(1 / MSE) per image
def psnr_by_hand(x, y):
    """x, y: (B, C, H, W) in [0, 1]. Returns a scalar tensor: the mean of the B per-image PSNRs in dB."""
    mse = ((x - y) ** 2).flatten(1).mean(1)  # (B,): one mean squared error per image
    return (10 * torch.log10(1 / mse)).mean()
