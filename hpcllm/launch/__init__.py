"""From RunSpecs to jobs: rendering, run directories and manifests, scheduler backends. Torch-free."""
