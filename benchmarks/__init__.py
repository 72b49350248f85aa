"""Performance workloads; run them all with ``python -m benchmarks.run`` (JSON on stdout)."""
