"""Hooks the tests use to inject faults; inert unless TUNER_FAULT is set."""
