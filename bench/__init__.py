"""gainx benchmarks (pytest-benchmark); run them all with ``python -m bench.run``."""
