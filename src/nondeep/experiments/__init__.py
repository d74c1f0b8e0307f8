"""Experiments: multi-run jobs that write a table, JSON and a plot (quickstart, labs)."""
