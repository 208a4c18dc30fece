"""Tuning: hyper-parameter search and the batch-size explore, orchestrators over ordinary runs."""
