"""The only layer that imports Ray: search spaces, the trial function, the driver, its progress and its tables."""
