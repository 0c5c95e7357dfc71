"""Layer 3: the experiments. The norm x position comparison, the sweeps, the claims, the
recommendation, the benchmark and the demo; their results are plain data.
"""
