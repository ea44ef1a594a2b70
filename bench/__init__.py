"""Benchmarks (`make bench`): each figure printed as a ratio to a baseline measured in the same run."""
