"""Benchmarks: every speed or memory target, measured side by side against its baseline."""
