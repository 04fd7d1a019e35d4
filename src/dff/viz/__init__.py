"""Figures and images. Every figure function returns a matplotlib Figure (drawn inline in a
notebook) and writes a file only when given `path=`; nothing here switches matplotlib's backend.

    images.py   grids, PNG files, conditions shown as images, animated GIFs
    plots.py    the denoising trajectory, the loss curve
    process.py  the sandbox: the diffusion process on one image (forward grid, steps vs. jump,
                schedules, x0 from x_t, the reverse chain with the true noise)
"""
from .images import (make_grid, save_gif, save_grid, save_images, show_condition, to_pil, translation_grid,
                     viewing_scale)
from .plots import plot_loss, plot_quality, plot_trajectory, read_metric, save_figure, show_image
from .sandbox import (forward_process_figure, oracle_chain, reverse_chain_figure, schedules_figure, steps_vs_jump,
                      steps_vs_jump_figure, x0_prediction_figure)

__all__ = [
    "make_grid", "to_pil", "save_grid", "save_images", "save_gif", "show_condition", "translation_grid",
    "viewing_scale", "plot_trajectory", "plot_loss", "plot_quality", "read_metric", "save_figure", "show_image",
    "forward_process_figure", "steps_vs_jump", "steps_vs_jump_figure", "schedules_figure",
    "x0_prediction_figure", "oracle_chain", "reverse_chain_figure",
]
