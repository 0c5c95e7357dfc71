"""Layer 1: training a model of `core.models` on a dataset of `core.data`."""
