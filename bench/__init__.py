"""Benchmarks of kubetune, each runnable as a module: `python -m bench.trainer` measures the
trainer against TRL's SFTTrainer on the same work."""
