import os

import pytest

from tuner.demo_data import write_demo_data


@pytest.fixture(scope="session", autouse=True)
def node_cache(tmp_path_factory):
    """A fresh node cache for the session (inherited by Ray workers and CLI subprocesses)."""
    folder = tmp_path_factory.mktemp("node-cache")
    previous = os.environ.get("TUNER_CACHE")
    os.environ["TUNER_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("TUNER_CACHE", None)
    else:
        os.environ["TUNER_CACHE"] = previous


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """The default demo dataset, written once per test session; treat it as read-only."""
    root = tmp_path_factory.mktemp("demo") / "data"
    write_demo_data(root)
    return root
