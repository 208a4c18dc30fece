"""Tokenize text into memory-mapped token stores and sample them deterministically (numpy only).

Torch-free on purpose: stores are prepared on login or CPU nodes; ``hpcllm.engine.data`` wraps the
sampler in a torch ``DataLoader``. Format and sampling rule: docs/data.md.
"""
