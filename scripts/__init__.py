"""Command-line tools of the bundle. The benchmarks run as modules from the bundle root, for example
``python -m scripts.benchmark_inference``, and share ``scripts.benchmarking``."""
