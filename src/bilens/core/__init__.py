"""Layer 0, the foundation: what every other layer builds on.

Errors and input checks, the configuration, the norms and their statistics, targets,
baselines, datasets, the checkpoint format and the model families (`core.models`).
Nothing here imports from a layer above.
"""
