"""Benchmarks: ``python -m bench.redis_baseline`` and ``python -m bench.pipeline`` (see docs/BENCHMARKS.md)."""
