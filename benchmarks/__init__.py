"""Benchmark scripts (not tests): they print tables and write JSON."""
