"""Solutions of the exercises of notebooks/02_pixel.py.

Each block starts with a line `# %% exercise NAME` and is the full text of the notebook cell tagged
"exercise" whose first line is `# Exercise NAME: ...`; tests/test_notebooks.py puts these blocks in
place of the stubs before it runs the notebook.
"""

# %% exercise q_sample
# Exercise q_sample: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps
def q_sample_by_hand(x0, t, eps, alpha_bar):
    """x0, eps: (B, ...); t: (B,) long timesteps; alpha_bar: (T,) table. Returns x_t, shaped like x0."""
    ab = alpha_bar[t].to(x0.dtype).reshape(-1, *[1] * (x0.dim() - 1))  # (B, 1, ...): one alpha_bar_t per sample
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


# %% exercise v_target
# Exercise v_target: v = alpha * eps - sigma * x0
def v_target(x0, eps, alpha, sigma):
    """x0, eps: (B, C, H, W); alpha, sigma: (B, 1, 1, 1). Returns v, shaped like x0."""
    return alpha * eps - sigma * x0
