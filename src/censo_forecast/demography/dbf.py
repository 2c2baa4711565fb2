"""Columns of a dBASE III table (.dbf), and DATASUS's compressed form of it (.dbc).

DATASUS publishes SINASC and its population estimates as .dbf tables, SINASC's compressed
with PKWare's DCL implode (.dbc: the .dbf header, 4 bytes of CRC, then the imploded
records; `datasus-dbc` decompresses them). A year of Brazil's births is about three million
records: the columns needed are sliced out of the fixed-width records with numpy, not read
record by record.
"""

from __future__ import annotations

import struct

import numpy as np


class DbfError(ValueError):
    """A table that is not a dBASE table, or lacks a column; the caller adds the file's name."""


def decompress_dbc(data: bytes) -> bytes:
    """A .dbc file's bytes as the .dbf they compress."""
    try:
        import datasus_dbc
    except ImportError:
        raise DbfError("reading DATASUS's .dbc files needs datasus-dbc: pip install 'censo-forecast[demography]'") from None
    if len(data) < 12:
        raise DbfError(f"{len(data)} bytes: too short for a .dbc file")
    try:
        return datasus_dbc.decompress_bytes(data)
    except Exception as exc:  # the library raises its own error types for a damaged stream
        raise DbfError(f"not a valid .dbc file ({exc})") from None


def columns(data: bytes, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named columns of a .dbf table as arrays of stripped text (bytes), deleted records left out."""
    if len(data) < 32 or data[0] not in (0x02, 0x03, 0x04, 0x05, 0x30, 0x31, 0x43, 0x63, 0x83, 0x8B, 0xCB, 0xF5, 0xFB):
        raise DbfError("not a dBASE table (.dbf)")
    records, header_length, record_length = struct.unpack_from("<IHH", data, 4)
    fields: dict[str, tuple[int, int]] = {}
    offset, position = 1, 32  # each record starts with its deletion flag
    while position + 32 <= header_length and data[position] != 0x0D:
        name = data[position:position + 11].split(b"\x00", 1)[0].decode("ascii", "replace").strip().upper()
        width = data[position + 16]
        fields[name] = (offset, width)
        offset, position = offset + width, position + 32
    missing = [n for n in names if n.upper() not in fields]
    if missing:
        raise DbfError(f"no column {', '.join(missing)} (columns: {', '.join(fields)})")
    available = (len(data) - header_length) // record_length if record_length else 0
    if available < records:
        raise DbfError(f"truncated: the header announces {records} records, the file holds {available}")
    table = np.frombuffer(data, dtype=np.uint8, count=records * record_length, offset=header_length).reshape(records, record_length)
    kept = table[table[:, 0] != ord("*")]
    out = {}
    for name in names:
        start, width = fields[name.upper()]
        raw = np.ascontiguousarray(kept[:, start:start + width]).view(f"S{width}").ravel()
        out[name] = np.char.strip(raw)
    return out
