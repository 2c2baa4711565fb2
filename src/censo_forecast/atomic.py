"""Atomic file writes: a temporary file beside the target, then one rename.

A crash leaves either the old file or the new one under the final name, never half of one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


class DiskFull(OSError):
    """A write that failed for want of space; the message names the file and the folder."""

    def __init__(self, path: Path, free: int | None):
        room = f"{free / 1e6:.1f} MB free" if free is not None else "no space left"
        super().__init__(errno.ENOSPC, f"cannot write {path}: the disk is full ({room} in {path.parent}); free some "
                                       "space and rerun the same command, which resumes where it stopped")

    def __str__(self) -> str:
        return str(self.strerror)


_NO_SPACE = "No space left on device"  # polars' parquet writer keeps only the words: "... (os error 28)"
FULL_BELOW_BYTES = 1 << 20  # a write that failed with less than this left: taken as the disk being full


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_full(exc: BaseException, path: Path) -> DiskFull | None:
    """`exc`, met while writing `path`, as a DiskFull when the disk is full: its errno or its words
    say so, or, where a library has wrapped the error in its own (polars: "Invalid thrift:
    transport error"), the folder has next to nothing left. Call it before removing the partial file."""
    if isinstance(exc, DiskFull):
        return exc
    free = _free_bytes(Path(path).parent)
    chain: BaseException | None = exc
    seen: set[int] = set()
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        if isinstance(chain, OSError) and chain.errno in (errno.ENOSPC, errno.EDQUOT) or _NO_SPACE in str(chain):
            return DiskFull(Path(path), free)
        chain = chain.__cause__ or chain.__context__
    if isinstance(exc, Exception) and free is not None and free < FULL_BELOW_BYTES:
        return DiskFull(Path(path), free)
    return None


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path in target's folder; rename it onto target if the block succeeds.
    A failure for want of space is raised as DiskFull, naming the target."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise (disk_full(exc, target) or exc) from None
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, target)
    except Exception as exc:
        full = disk_full(exc, target)
        if full is None:
            raise
        raise full from exc
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: Path, obj) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(target: Path, frame) -> None:
    with atomic_path(target) as tmp:
        frame.write_parquet(tmp, compression="zstd")


def concat_parquet(target: Path, sources: list[Path]) -> None:
    """One Parquet file from Parquet files, copied row group by row group (never all in memory:
    a national walk-forward's predictions are gigabytes). The columns are those of every file,
    in first-seen order; a file without one (a stage without Demografia) holds it as nulls."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(target) as tmp:
        schema = pa.unify_schemas([pq.read_schema(s) for s in sources])
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for source in sources:
                parts = pq.ParquetFile(source)
                for group in range(parts.num_row_groups):
                    table = parts.read_row_group(group)
                    for field in schema:
                        if field.name not in table.column_names:
                            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
                    writer.write_table(table.select(schema.names).cast(schema))


def write_csv(target: Path, frame) -> None:
    with atomic_path(target) as tmp:
        frame.write_csv(tmp)


class FolderBusy(Exception):
    """Another process holds the folder's lock; the message names it."""


@contextmanager
def folder_lock(folder: Path, what: str = "censo-forecast run", wait_s: float = 0.0) -> Iterator[None]:
    """Hold `folder/.lock` for the block, so two runs never mix their files in one folder.

    The lock is the kernel's (flock): it is released when the block ends or the process dies,
    even by kill -9, so a crash never leaves a stale lock. The file holds the holder's pid,
    for the message the second process gets. `wait_s`: how long to wait for a holder first.
    """
    import fcntl

    path = Path(folder) / ".lock"
    handle = open(path, "a+", encoding="utf-8")
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                if time.monotonic() >= deadline:
                    raise FolderBusy(f"{folder} is in use by another {what} (process {holder}); wait for it to finish, "
                                     "or choose another folder") from None
                time.sleep(0.5)
        handle.seek(0)
        handle.truncate()
        try:
            os.write(handle.fileno(), f"{os.getpid()}\n".encode())
        except OSError:
            pass  # a full disk: the pid only serves the message a second process gets; the lock is the flock
        yield
    finally:
        handle.close()
