"""Layer 1: the prediction. Every channel's effect from one forward and one backward pass
under a linearization (`frozen`, `live`, `renorm`).
"""
