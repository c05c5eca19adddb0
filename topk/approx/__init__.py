"""Approximate top-K, Beam-free: the mergeable sketches (``sketches``:
Count-Min + candidates, DataSketches frequent items) and how slices of
sketches become ranked windows with bounds (``sketch_windows``).
"""
