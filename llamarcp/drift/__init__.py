"""Drift checker: the pinned API vs built libraries, other llama.cpp versions and Python code.

Reads api.json manifests only, so it works from an installed wheel; `python -m codegen.drift` (checkout) adds
header and source-tree inputs. Entry point: `python -m llamarcp.drift symbols|diff|scan ...` (see `__main__`).
"""
