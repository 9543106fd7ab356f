"""Benchmarks: scripts that print ratio tables; results and commands in docs/BENCHMARKS.md."""
