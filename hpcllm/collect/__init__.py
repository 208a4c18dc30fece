"""Read run directories back into scaling tables and plots. Torch-free (runs on a login node)."""
