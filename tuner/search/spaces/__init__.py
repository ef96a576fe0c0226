"""The shipped search spaces, package data: `--space finetune` means `tuner/search/spaces/finetune.py`.

They ship inside the package so a wheel install finds them (tuner.space reads them through
importlib.resources); `search_spaces/` at the top of the repository links to these same files.
"""
