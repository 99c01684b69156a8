"""Benchmark sections kept out of benchmark.py: the deployment latency table (deploy.py)."""
