"""Configuration models (pydantic v2, ``extra="forbid"``) and their YAML loading. Torch-free."""

# Names become folder names and job names and appear in batch scripts: letters, digits, . _ - only.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
