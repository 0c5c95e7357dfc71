"""The model families. `mlp`: the bilinear residual network of SPEC §1."""
