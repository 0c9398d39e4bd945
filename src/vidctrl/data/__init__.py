"""Datasets: layouts, video I/O, frame sampling, buckets, checks."""
