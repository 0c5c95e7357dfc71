"""The model families. `mlp`: the bilinear residual network of docs/spec.md §1."""
