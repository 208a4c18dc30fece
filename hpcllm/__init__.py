"""hpcllm: LLM pretraining scaling experiments on SLURM clusters with a bundled FSDP2 engine.

Only ``hpcllm.engine`` imports torch; everything else runs on a login node without it.
"""

__version__ = "0.1.0"
