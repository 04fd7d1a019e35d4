"""Solutions of the exercises of notebooks/01b_why_it_works.py (the scheme of notebooks/solutions/02_pixel.py:
each block `# %% exercise NAME` replaces the notebook cell tagged "exercise" that starts with
`# Exercise NAME:`)."""

# %% exercise train_denoiser
# Exercise train_denoiser: DDPM's Algorithm 1 with Adam, and an EMA copy of the network
def train_denoiser(net, data_sampler, diffusion, steps, ema_decay, lr=2e-3):
    """net(x_t, t) -> eps_hat, with x_t (B, D) and t (B,) long; data_sampler() -> a batch x0 (B, D);
    diffusion: a GaussianDiffusion (diffusion.T timesteps, diffusion.q_sample(x0, t, eps)). Takes `steps`
    Adam steps (learning rate lr) on L_simple (the note's Eq. of L_simple, DDPM Eq. 14) and returns a copy of
    net whose weights follow the trained ones as an exponential moving average of decay ema_decay, updated
    after every step."""
    import copy

    ema = copy.deepcopy(net).requires_grad_(False)  # a copy: theta_ema starts at theta and is never trained
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        x0 = data_sampler()  # (B, D)
        t = torch.randint(0, diffusion.T, (x0.shape[0],))  # (B,): every t, one for each sample
        eps = torch.randn_like(x0)
        x_t = diffusion.q_sample(x0, t, eps)  # the jump q(x_t | x0), DDPM Eq. 4
        loss = ((net(x_t, t) - eps) ** 2).mean()  # L_simple: the target is the noise, not x0
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():  # theta_ema <- decay theta_ema + (1 - decay) theta, after every step
            for p_ema, p in zip(ema.parameters(), net.parameters()):
                p_ema.mul_(ema_decay).add_(p, alpha=1 - ema_decay)
    return ema


# %% exercise ddpm_step_eps
# Exercise ddpm_step_eps: one step of DDPM's sampler written with the predicted noise
def ddpm_step_eps(x_t, t, eps_hat, betas, alpha_bar, noise):
    """x_t, eps_hat, noise: (B, ...) tensors; t: an int, 0-indexed; betas, alpha_bar: the (T,) tables.
    Returns x_{t-1}, shaped like x_t: the note's DDPM step (DDPM Algorithm 2, line 4) with the posterior
    variance beta_tilde_t (DDPM Eq. 7) as sigma_t^2."""
    beta, ab = float(betas[t]), float(alpha_bar[t])
    ab_prev = float(alpha_bar[t - 1]) if t > 0 else 1.0  # not alpha_bar[-1], the last entry of the table
    mean = (x_t - beta / math.sqrt(1 - ab) * eps_hat) / math.sqrt(1 - beta)  # 1 / sqrt(alpha_t) (x_t - ...)
    if t == 0:
        return mean  # the last step: no noise
    beta_tilde = (1 - ab_prev) / (1 - ab) * beta
    return mean + math.sqrt(beta_tilde) * noise


# %% exercise ddim_step
# Exercise ddim_step: one deterministic DDIM step
def ddim_step(x_t, t, t_prev, eps_hat, alpha_bar):
    """x_t, eps_hat: (B, ...) tensors; t, t_prev: ints, 0-indexed, t_prev < t, t_prev = -1 after the last step;
    alpha_bar: the (T,) table. Returns x_{t_prev}, shaped like x_t: the note's DDIM step (Song et al. 2021,
    Eq. 12 with eta = 0)."""
    ab = float(alpha_bar[t])
    ab_prev = float(alpha_bar[t_prev]) if t_prev >= 0 else 1.0
    x0_hat = (x_t - math.sqrt(1 - ab) * eps_hat) / math.sqrt(ab)  # the x0 the noise implies (Eq. 4)
    return math.sqrt(ab_prev) * x0_hat + math.sqrt(1 - ab_prev) * eps_hat  # the same eps, at the lower noise level
