"""The only layer that imports Ray: run settings, search spaces, the trial function, the search driver and its run files."""
