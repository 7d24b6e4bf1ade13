"""Hyper-parameter search with Ray Tune: the search file (``space``) and the staged search (``search``)."""
