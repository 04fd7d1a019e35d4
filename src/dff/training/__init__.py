"""The Lightning shell: DiffusionModule (optimiser, logging, guards, counters around a DiffusionModel), the
autoencoder's training module, callbacks, post-hoc EMA, speed options, run folders and `dff fit`."""
