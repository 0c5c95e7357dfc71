"""Layer 1: the ground truth. Every channel really ablated, exactly and fast.

The public functions and the plain loop references live here; the fast engine (the
perturbation plan, the fused steps, the Triton kernels) is private, in `_engine`.
"""
