"""Configuration models (pydantic v2, ``extra="forbid"``) and their YAML loading. Torch-free."""
