"""Shared test set-up: one thread per worker (pytest-xdist runs two workers on two cores)."""

import torch

torch.set_num_threads(1)
