"""Solutions of the exercises of notebooks/01_sandbox.py (the scheme of notebooks/solutions/02_pixel.py:
each block `# %% exercise NAME` replaces the notebook cell tagged "exercise" that starts with
`# Exercise NAME:`)."""

# %% exercise posterior_mean
# Exercise posterior_mean: mu_tilde = sqrt(ab_prev) beta / (1 - ab) x0 + sqrt(alpha) (1 - ab_prev) / (1 - ab) x_t
def posterior_mean(x0, x_t, t, betas, alpha_bar):
    """x0, x_t: (B, ...); t: (B,) long; betas, alpha_bar: (T,) tables. Returns mu_tilde, shaped like x0."""
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=alpha_bar.dtype), alpha_bar[:-1]])  # alpha_bar of step t - 1

    def per_sample(table):  # (T,) -> (B, 1, ...), one value per sample, broadcasting against x0
        return table[t].to(x0.dtype).reshape(-1, *[1] * (x0.dim() - 1))

    beta, ab, ab_prev = per_sample(betas), per_sample(alpha_bar), per_sample(alpha_bar_prev)
    return (ab_prev.sqrt() * beta / (1 - ab)) * x0 + ((1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)) * x_t
