"""Reads a run's files: tables, parameter importance, the best model's analysis, the HTML page and its figures."""
