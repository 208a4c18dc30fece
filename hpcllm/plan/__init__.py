"""Pure functions of an experiment and a profile: what its points cost before they run."""
