import pytest

from tuner.demo_data import write_demo_data


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """The default demo dataset, written once per test session; treat it as read-only."""
    root = tmp_path_factory.mktemp("demo") / "data"
    write_demo_data(root)
    return root
