"""Drift checker: the pinned API vs built libraries, other llama.cpp versions and Python code.

Kept import-free: `llamarcp._guard` imports `llamarcp.drift.used_functions` on the load path.
Entry point: `python -m llamarcp.drift symbols|diff|scan|used ...` (see `__main__`).
"""
