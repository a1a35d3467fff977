"""Shared test settings."""

import torch

# The tests use tiny models: one thread is faster than several, and keeps parallel jobs on a small
# machine from oversubscribing its cores.
torch.set_num_threads(1)
