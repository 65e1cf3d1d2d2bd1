"""Benchmarks: measurements side by side in one invocation (peak memory, throughput), as importable
functions; ``scripts/`` holds thin shims."""
