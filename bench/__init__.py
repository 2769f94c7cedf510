"""Benchmarks, the gateway simulator and fault drills (not part of the installed package)."""
