"""Atomic file writes: a temporary file beside the target, then one rename.

A crash leaves either the old file or the new one under the final name, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path in target's folder; rename it onto target if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, target)
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
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()
