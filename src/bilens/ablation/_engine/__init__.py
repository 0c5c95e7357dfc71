"""The private engine behind `bilens.ablation`: perturbation plan, fused steps, kernels."""
