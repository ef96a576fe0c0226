"""A run at an object-store URI, served by a real S3 endpoint (moto's server mode speaks the S3 HTTP API;
pyarrow's S3 client, which Ray and tuner write through, finds it by AWS_ENDPOINT_URL): interrupted with
Ctrl-C on one head node, resumed by a new head node whose node cache is empty, its study travelling with
the run; and a new run reusing a name at that URI starts a study of its own.
"""

import io
import os
import socket

import boto3
import optuna
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer
from stopped_searches import tuner_in_session, write_tiny_search

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 endpoint on a free local port with an empty bucket `runs`; the environment that reaches it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    client.create_bucket(Bucket="runs")
    root = write_tiny_search(tmp_path_factory.mktemp("object-store"))
    yield root, env, client
    server.stop()


def tuner(*args, env, markers=None, cwd=None):
    return tuner_in_session(*args, env=env, pgid_file=markers / "search.pgid" if markers else None, cwd=cwd)


def on_node(env, root, node: str) -> dict:
    """The environment of a head node whose node cache (study files, data) is its own folder."""
    return {**env, "TUNER_CACHE": str(root / f"cache-{node}")}


def read(client, key: str) -> bytes:
    return client.get_object(Bucket="runs", Key=key)["Body"].read()


def study_of(client, run: str, tmp_path) -> optuna.Study:
    (tmp_path / f"{run}.db").write_bytes(read(client, f"{run}/optuna.db"))
    return optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / f'{run}.db'}")


def test_an_interrupted_run_at_a_uri_is_resumed_by_a_new_head_node(s3, tmp_path):
    root, env, client = s3
    markers = root / "markers"
    markers.mkdir()
    first = {**on_node(env, root, "first"), "TUNER_FAULT": "sigint@epoch=2,step=1,after=1",
             "TUNER_FAULT_DIR": str(markers)}
    stopped = tuner("search", "--space", str(root / "space.py"), "--data", str(root / "data"), "--storage",
                    "s3://runs", "--name", "exp", env=first, markers=markers)
    assert stopped.returncode == 130, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    status = [row["status"] for row in pq.read_table(io.BytesIO(read(client, "exp/trials.parquet"))).to_pylist()]
    assert "interrupted" in status and "stopped_early" not in status

    resumed = tuner("resume", "s3://runs/exp", env=on_node(env, root, "second"))  # no node-local study there
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rows = pq.read_table(io.BytesIO(read(client, "exp/trials.parquet"))).to_pylist()
    assert sorted(row["status"] for row in rows) == ["completed"] * 3
    study = study_of(client, "exp", tmp_path)
    told = {t.user_attrs["trial_id"]: (t.state.name, t.value) for t in study.trials}
    assert told == {row["trial_id"]: ("COMPLETE", row["val_acc"]) for row in rows}  # the first node's trials too
    # A run at a URI gets its report in ./report-NAME: here, not in the checkout pytest runs from.
    report = tuner("report", "s3://runs/exp", env=on_node(env, root, "third"), cwd=tmp_path)
    assert "optuna.db agrees with trials.parquet on all 3 ended trials" in report.stdout, report.stderr[-2000:]
    assert (tmp_path / "report-exp" / "index.html").is_file()


def test_a_new_run_reusing_a_name_at_a_uri_starts_its_own_study(s3, tmp_path):
    root, env, client = s3
    node = on_node(env, root, "reuse")
    args = ("search", "--space", str(root / "space.py"), "--data", str(root / "data"), "--storage", "s3://runs",
            "--name", "again", "--trials", "2")
    assert tuner(*args, env=node).returncode == 0
    for item in client.list_objects_v2(Bucket="runs", Prefix="again/")["Contents"]:  # the run deleted
        client.delete_object(Bucket="runs", Key=item["Key"])
    again = tuner(*args, env=node)  # the node still caches the first run's study
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert len(study_of(client, "again", tmp_path).trials) == 2
