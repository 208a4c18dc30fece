"""The table formats ``hpcllm collect --format`` writes: here, apart from the pandas code, so the CLI
offers them as choices without importing pandas."""

from typing import Literal, get_args

TableFormat = Literal["markdown", "csv", "json", "latex"]
FORMATS: tuple[str, ...] = get_args(TableFormat)
