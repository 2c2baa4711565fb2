"""Folders that may be local paths or fsspec URLs (file://, s3://, gs://, ...).

Cluster workers must reach the raw zips and the Parquet cache; on a shared file system a
plain path does, elsewhere an object-store URL does. Local paths (and file:// URLs) take
the direct road; any other URL goes through fsspec (its protocol package, s3fs for one,
must be installed on the client and the workers). Writes stay atomic: a temporary
object beside the target, then a move.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from censo_forecast import atomic

log = logging.getLogger(__name__)
Location = Path | str  # a local path, or an fsspec URL


def is_url(location) -> bool:
    return "://" in str(location)


def local_path(location) -> Path | None:
    """The local path of a plain path or file:// URL (`~` expanded); None for a remote URL."""
    text = str(location)
    if text.startswith("file://"):
        return Path(text[len("file://"):]).expanduser()
    return None if is_url(text) else Path(text).expanduser()


def check_location(location, what: str) -> None:
    """A remote URL whose protocol fsspec knows and whose package is installed; else a
    one-line message naming the setting, before any work."""
    text = str(location)
    if local_path(text) is not None:
        return
    protocol = text.split("://", 1)[0]
    try:
        from fsspec.registry import get_filesystem_class

        get_filesystem_class(protocol)
    except ImportError as exc:
        package = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "abfs": "adlfs", "az": "adlfs"}.get(protocol)
        hint = f"pip install {package}" if package else str(exc).splitlines()[0]
        raise ValueError(f"{what} {text}: the {protocol}:// protocol needs a package that is not installed ({hint})") from None
    except ValueError:
        raise ValueError(f"{what} {text}: unknown protocol {protocol!r} (a local folder, file://, s3://, gs:// ...)") from None


def normalize(location):
    """Plain paths and file:// URLs as Path; other URLs as they are (without a trailing '/')."""
    path = local_path(location)
    return path if path is not None else str(location).rstrip("/")


def _fs(url: str):
    from fsspec.core import url_to_fs

    return url_to_fs(url)


def join(location, name: str):
    location = normalize(location)
    return location / name if isinstance(location, Path) else f"{location}/{name}"


def exists(location) -> bool:
    path = local_path(location)
    if path is not None:
        return path.exists()
    fs, p = _fs(location)
    return fs.exists(p)


def listdir(location) -> dict[str, Location]:
    """File names in a folder and their locations (empty when the folder does not exist)."""
    path = local_path(location)
    if path is not None:
        return {p.name: p for p in sorted(path.iterdir()) if p.is_file()} if path.is_dir() else {}
    fs, p = _fs(location)
    if not fs.exists(p):
        return {}
    names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(p, detail=True) if e.get("type") == "file"]
    return {name: join(location, name) for name in sorted(names)}


def stat(location) -> dict:
    """Size and a change marker (mtime in ns locally; the store's version/ETag/mtime remotely)."""
    path = local_path(location)
    if path is not None:
        st = path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    fs, p = _fs(location)
    info = fs.info(p)
    marker = next(
        (str(info[k]) for k in ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "created") if info.get(k)), None
    )
    return {"size": int(info["size"]), "mtime_ns": marker}


def sha256(location) -> str:
    path = local_path(location)
    if path is None:
        return hashlib.sha256(read_bytes(location)).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_bytes(location) -> bytes:
    """A whole file. Remote objects come in one request (`cat_file`): some filesystems hand
    every opener the same file object, which concurrent readers (a cluster's workers) would
    share."""
    path = local_path(location)
    if path is not None:
        return path.read_bytes()
    fs, p = _fs(location)
    return fs.cat_file(p)


@contextmanager
def local_copy(location) -> Iterator[Path]:
    """A local file with the content of `location` (itself when it is local)."""
    path = local_path(location)
    if path is not None:
        yield path
        return
    folder = Path(tempfile.mkdtemp(prefix="censo-forecast-"))
    try:
        target = folder / str(location).rsplit("/", 1)[-1]
        fs, p = _fs(location)
        fs.get(p, str(target))
        yield target
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _put_atomic(location, write) -> None:
    """Write with `write(local_path)`, then upload beside the target and move it into place."""
    fs, p = _fs(location)
    with tempfile.TemporaryDirectory(prefix="censo-forecast-") as folder:
        tmp = Path(folder) / "part"
        write(tmp)
        staging = f"{p}.{uuid.uuid4().hex}.tmp"
        fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        fs.put(str(tmp), staging)
        try:
            fs.mv(staging, p)
        finally:
            if fs.exists(staging):
                fs.rm(staging)


def write_parquet(location, frame: pl.DataFrame) -> None:
    path = local_path(location)
    if path is not None:
        atomic.write_parquet(path, frame)
    else:
        _put_atomic(location, lambda tmp: frame.write_parquet(tmp, compression="zstd"))


def write_text(location, text: str) -> None:
    path = local_path(location)
    if path is not None:
        atomic.write_text(path, text)
    else:
        _put_atomic(location, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_text(location) -> str:
    return read_bytes(location).decode("utf-8")


def read_json_dict(location, what: str) -> dict:
    """A JSON object file (a manifest); {} when absent, and {} with one warning when it is
    damaged (not UTF-8, not JSON, not an object), so the caller rebuilds it."""
    if not exists(location):
        return {}
    try:
        value = json.loads(read_text(location))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s %s is damaged (%s); it will be rebuilt", what, location, exc)
        return {}
    if not isinstance(value, dict):
        log.warning("%s %s holds a JSON %s, not an object; it will be rebuilt", what, location, type(value).__name__)
        return {}
    return value


def makedirs(location) -> None:
    path = local_path(location)
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
    else:
        fs, p = _fs(location)
        fs.makedirs(p, exist_ok=True)
