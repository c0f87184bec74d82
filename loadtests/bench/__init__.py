"""The side-by-side benchmark: `python -m loadtests.bench` (see __main__.py)."""
