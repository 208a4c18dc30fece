"""Planning: pure functions from an experiment and a cluster profile to RunSpecs, and what a point costs."""
