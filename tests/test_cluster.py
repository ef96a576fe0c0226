"""A real two-node Ray cluster on this machine: trials on both nodes, data and storage as file:// URIs
through pyarrow.fs (the same code path as s3://), and a worker node lost mid-trial."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pyarrow.parquet as pq
import pytest
from ray.cluster_utils import Cluster

from tuner.train.demo_data import write_demo_data

pytestmark = pytest.mark.slow

SPACE = """
SETTINGS = {"model": "resnet18", "weights": "none", "image_size": 32, "batch_size": 16}

def space(trial):
    trial.suggest_float("lr_head", 1e-4, 1e-2, log=True)
    return {"unfreeze_depth": 1}
"""


@pytest.fixture
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster, worker
    cluster.shutdown()


def _results(storage):
    """(trial folder, last result) of every trial that has reported, read from the shared storage."""
    for result_file in storage.glob("multi/trial_*/result.json"):
        lines = result_file.read_text().splitlines()
        if lines:
            yield result_file.parent.name, json.loads(lines[-1])


def test_search_runs_on_both_nodes_and_survives_losing_one(cluster, tmp_path):
    cluster, worker = cluster
    write_demo_data(tmp_path / "data", train_per_class=12, val_per_class=4, test_per_class=0)
    (tmp_path / "space.py").write_text(textwrap.dedent(SPACE))
    storage = tmp_path / "storage"
    process = subprocess.Popen(
        [sys.executable, "-m", "tuner", "search", "--space", str(tmp_path / "space.py"),
         "--data", f"file://{tmp_path / 'data'}", "--storage", f"file://{storage}", "--name", "multi",
         "--address", cluster.address, "--trials", "4", "--max-concurrent", "2", "--max-epochs", "5",
         "--grace-period", "5", "--max-failures", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TUNER_CACHE": str(tmp_path / "cache")},
    )
    # Wait until a trial on the worker node has reported an epoch, then take that node away.
    victim, deadline = None, time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and process.poll() is None:
        running_on_worker = [name for name, result in _results(storage)
                             if result["node"] == worker.node_id and result["training_iteration"] < 5]
        victim = running_on_worker[0] if running_on_worker else None
        time.sleep(0.5)
    assert victim is not None, process.stdout.read()[-3000:] if process.poll() is not None else "no trial on worker"
    cluster.remove_node(worker)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]

    trials = pq.read_table(storage / "multi" / "trials.parquet").to_pylist()
    assert len(trials) == 4 and all(row["status"] == "completed" for row in trials), trials
    epochs = pq.read_table(storage / "multi" / "epochs.parquet").to_pylist()
    assert {row["node"] for row in epochs} >= {worker.node_id, cluster.head_node.node_id}
    victim_id = victim.removeprefix("trial_")
    victim_epochs = [row["epoch"] for row in epochs if row["trial_id"] == victim_id]
    # It went on from its last checkpoint on the head node: no epoch was trained twice.
    assert victim_epochs == [1, 2, 3, 4, 5], victim_epochs
    victim_nodes = {row["node"] for row in epochs if row["trial_id"] == victim_id}
    assert victim_nodes == {worker.node_id, cluster.head_node.node_id}
    assert (storage / "multi" / "best" / "model.pt").is_file()
    assert list((tmp_path / "cache" / "data").iterdir())  # the data URI went through the node cache

    # resume works from the storage URI too: a finished search has nothing left to run and re-exports.
    (storage / "multi" / "trials.parquet").unlink()
    resumed = subprocess.run([sys.executable, "-m", "tuner", "resume", f"file://{storage / 'multi'}"],
                             capture_output=True, text=True, timeout=600,
                             env={**os.environ, "TUNER_CACHE": str(tmp_path / "cache")})
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert pq.read_table(storage / "multi" / "trials.parquet").num_rows == 4
