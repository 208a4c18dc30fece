"""The training engine: the only package of hpcllm that imports torch.

Run it as ``python -m hpcllm.engine --config RUN_DIR/run.yaml`` (or under ``torchrun``).
"""
