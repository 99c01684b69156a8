"""Code that exists only for benchmark.py: reproductions of the original code's ways (oldway.py), loader
timings (loader.py) and the deployment latency table (deploy.py)."""
