"""Benchmarks: this project against the libraries' standard recipes, measured side by side."""
