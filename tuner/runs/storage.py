"""Data and run folders behind URIs (s3://, gs://, file://, anything pyarrow.fs understands).

A dataset URI is fetched once per node into a local cache that every trial on the node shares; a run
folder URI is written through pyarrow.fs. Plain paths stay plain paths and are used in place. No torch
here at import: fetching a dataset takes the node cache's lock (train/cache.py) when it runs.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs as pafs

from ..errors import UserError

_COMPLETE = ".tuner-complete"  # written last: a folder without it is an interrupted fetch


def is_uri(location: str) -> bool:
    return "://" in str(location)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise UserError(f"cannot open {uri!r} ({err}); pass a folder or a URI such as s3://bucket/prefix") from None


def local_data(location: str) -> Path:
    """A local folder holding the dataset at `location`: the folder itself, or the node's cached copy."""
    if not is_uri(location):
        return Path(location).expanduser().resolve()
    from ..train.cache import cache_root, node_lock  # train/cache.py loads torch: only for a URI, on a trial's node

    target = cache_root() / "data" / hashlib.sha256(location.encode()).hexdigest()[:16]
    if (target / _COMPLETE).is_file():
        return target
    with node_lock(target.with_suffix(".lock")):
        if (target / _COMPLETE).is_file():  # another trial fetched it while we waited
            return target
        fs, path = filesystem(location)
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.Directory:
            raise UserError(f"data {location!r} is not a folder; pass the URI of a folder of class folders")
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".fetch-"))
        try:
            pafs.copy_files(path, str(staging), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())
            (staging / _COMPLETE).write_text(location + "\n")
            shutil.rmtree(target, ignore_errors=True)  # an interrupted earlier fetch
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def upload_folder(local: Path, uri: str) -> None:
    """Copy a local folder's files to `uri` (a run folder's best/, tables, ...)."""
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def read_text(uri: str) -> str | None:
    """The text of a file at `uri`, or None when there is none."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def run_location(storage: str, name: str) -> str:
    """STORAGE/NAME as a URI, or as an absolute local path."""
    if is_uri(storage):
        return join(storage, name)
    return str(Path(storage).expanduser().resolve() / name)


def exists(location: str) -> bool:
    if not is_uri(location):
        return Path(location).exists()
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


@contextmanager
def staged(location: str):
    """A local folder whose files end up in `location`: the folder itself, or a temp copy uploaded at exit."""
    if not is_uri(location):
        Path(location).mkdir(parents=True, exist_ok=True)
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="tuner-upload-") as folder:
        yield Path(folder)
        upload_folder(Path(folder), location)


def read_file_text(location: str) -> str | None:
    """The text of a file given as a local path or a URI; None when it does not exist."""
    if not is_uri(location):
        path = Path(location)
        return path.read_text() if path.is_file() else None
    return read_text(location)
