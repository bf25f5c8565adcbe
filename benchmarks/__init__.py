"""mtasts benchmarks: ``python -m benchmarks`` (or ``./run bench``). See docs/benchmarks.md."""
