"""Exact and approximate streaming top-K (heavy hitters) on Apache Beam.

Beam-free algorithms live in the top-level modules of this package
(``events``, ``windows``, ``counting``, ``ranking``, ``query``, ...);
``transforms``, ``pipelines``, ``sources`` and ``sinks`` are thin Beam wiring
around them.
"""

__version__ = "0.1.0"
