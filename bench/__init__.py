"""Benchmarks: each prints comparable figures (ratios to a baseline run in the same process)."""
