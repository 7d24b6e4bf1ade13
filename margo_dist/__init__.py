"""margo-dist: train MARGO from one process to a Ray cluster."""

__version__ = "0.1.0"
