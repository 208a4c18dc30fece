"""``python -m hpcllm.engine --config RUN_DIR/run.yaml [--no-resume]`` (plain, or under torchrun).

Flags have full, distinct names: torchrun accepts abbreviated flags after the module name, so two
flags sharing a prefix would be ambiguous.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpcllm.engine.entry import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hpcllm.engine", allow_abbrev=False, description="Train one run from its run.yaml."
    )
    parser.add_argument(
        "--config", required=True, type=Path, help="the run's run.yaml; its folder is the run directory"
    )
    parser.add_argument("--no-resume", action="store_true", help="start from step 0 even if the run has checkpoints")
    args = parser.parse_args(argv)
    return run(args.config, resume=not args.no_resume)


if __name__ == "__main__":
    sys.exit(main())
