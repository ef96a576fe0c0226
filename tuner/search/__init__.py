"""The only layer that imports Ray: run settings, search spaces, the trial function, the driver and its run files."""
