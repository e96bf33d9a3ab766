"""mailapp benchmarks: run with ``make bench`` (never part of ``make test``)."""
