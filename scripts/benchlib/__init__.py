"""Helpers for scripts/bench_vs_nchan.py: the C load generator, servers under test, /proc."""
