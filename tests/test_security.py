"""Security: safe checkpoint loading, and a local Ray that listens on the loopback interface only."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tuner.errors import UserError
from tuner.search.trainable import TRAINER_STATE, load_trainer_state
from tuner.train.checkpoint import load_checkpoint


class _Bomb:
    """Unpickling this runs a shell command that writes a marker file: what a hostile checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _write_bomb(path: Path, marker: Path) -> None:
    # A real torch checkpoint (zip + pickle) whose payload, a plain pickle load would execute.
    torch.save({"format": "tuner.train.checkpoint/1", "model": _Bomb(marker)}, path)
    with open(path, "rb") as handle:  # sanity check: the bomb is armed for a load without weights_only
        assert b"system" in handle.read()


def test_a_pickle_bomb_checkpoint_is_refused_and_never_runs(tmp_path):
    marker, bomb = tmp_path / "exploded", tmp_path / "model.pt"
    _write_bomb(bomb, marker)
    with pytest.raises(UserError, match="not a readable tuner checkpoint"):
        load_checkpoint(bomb)
    assert not marker.exists()


def test_a_pickle_bomb_trial_checkpoint_is_refused_and_never_runs(tmp_path):
    from ray import tune

    marker = tmp_path / "exploded"
    (tmp_path / "checkpoint").mkdir()
    _write_bomb(tmp_path / "checkpoint" / TRAINER_STATE, marker)
    with pytest.raises(UserError, match="damaged|not a readable"):  # refused like a corrupt file
        load_trainer_state(tune.Checkpoint.from_directory(tmp_path / "checkpoint"))
    assert not marker.exists()


def test_the_cli_refuses_a_pickle_bomb_model_with_exit_code_2(tmp_path, demo_root):
    marker, bomb = tmp_path / "exploded", tmp_path / "model.pt"
    _write_bomb(bomb, marker)
    image = next((demo_root / "val").rglob("*.png"))
    result = subprocess.run([sys.executable, "-m", "tuner", "predict", "--model", str(bomb), str(image)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "not a readable tuner checkpoint" in result.stderr
    assert not marker.exists()


_LISTENERS = textwrap.dedent("""
    import json, os
    from tuner.search.driver import _init_ray
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    _init_ray(None)

    def descendants(root):
        children = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(pid))
        found, todo = [], [root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += children.get(pid, [])
        return found

    inodes = set()
    for pid in descendants(os.getpid()):  # this driver, Ray's GCS and raylet, their workers and agents
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                listening.append(fields[1])
    print(json.dumps({"listening": listening, "token_auth": is_token_auth_enabled()}))
""")

# Loopback addresses as /proc/net/tcp{,6} write them (hex, little-endian words): 127.0.0.1, ::1,
# ::ffff:127.0.0.1.
_LOOPBACK = ("0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F")


@pytest.mark.slow
def test_a_local_ray_listens_on_loopback_only_with_token_auth_on():
    result = subprocess.run([sys.executable, "-c", _LISTENERS], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["token_auth"] is True
    assert len(report["listening"]) >= 3  # GCS, raylet, object manager at least: the check saw Ray's sockets
    exposed = [address for address in report["listening"] if address.split(":")[0] not in _LOOPBACK]
    assert exposed == [], f"Ray listens beyond the loopback interface: {exposed}"
