"""Code that exists only for benchmark.py: reproductions of the original code's ways, loader timings."""
