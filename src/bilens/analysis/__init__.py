"""Layer 2: prediction against ground truth. Metrics, norm drift, circuits, `verify`, and
the result files they write.
"""
