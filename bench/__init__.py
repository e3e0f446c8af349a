"""Benchmarks: every speed or memory target of an issue, measured against its baseline."""
