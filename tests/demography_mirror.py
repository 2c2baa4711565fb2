"""A local DATASUS: .dbf tables, .dbc files as DATASUS compresses them, and an FTP server on 127.0.0.1.

The .dbc writer implodes with literal codes only (PKWare DCL, binary literals, 4 KB window):
a valid stream any DCL decoder reads, which is all a test needs of it.
"""

from __future__ import annotations

import io
import logging
import struct
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def dbf_bytes(fields: list[tuple[str, int]], rows: list[tuple[str, ...]]) -> bytes:
    """A dBASE III table of character fields."""
    header_length = 32 + 32 * len(fields) + 1
    record_length = 1 + sum(width for _, width in fields)
    out = io.BytesIO()
    out.write(struct.pack("<BBBBIHH20x", 0x03, 124, 1, 1, len(rows), header_length, record_length))
    for name, width in fields:
        out.write(struct.pack("<11sc4xBB14x", name.encode("ascii"), b"C", width, 0))
    out.write(b"\x0d")
    for row in rows:
        out.write(b" " + b"".join(str(v).encode("ascii").ljust(w)[:w] for v, (_, w) in zip(row, fields, strict=True)))
    out.write(b"\x1a")
    return out.getvalue()


def _implode_literals(data: bytes) -> bytes:
    """PKWare DCL implode of `data` as literals: a 0 bit and the byte for each, then the end code
    (length 519: flag 1, the length code of symbol 15, 1111111 sent inverted, and 8 extra bits of 1)."""
    bits: list[int] = []
    for byte in data:
        bits.append(0)
        bits.extend((byte >> i) & 1 for i in range(8))
    bits.append(1)
    bits.extend([0] * 7)
    bits.extend([1] * 8)
    out = bytearray([0, 6])  # binary literals, 4 KB dictionary
    for start in range(0, len(bits), 8):
        chunk = bits[start:start + 8]
        out.append(sum(bit << i for i, bit in enumerate(chunk)))
    return bytes(out)


def dbc_bytes(dbf: bytes) -> bytes:
    """A .dbc as DATASUS writes it: the .dbf's header, 4 bytes of CRC, the imploded rest."""
    header_length = struct.unpack_from("<H", dbf, 8)[0]
    return dbf[:header_length] + b"\0\0\0\0" + _implode_literals(dbf[header_length:])


def sinasc_dbc(rows: list[tuple[str, str]]) -> bytes:
    """A SINASC file: (CODMUNRES, DTNASC ddmmyyyy) per live birth, with a column between them as the real ones have."""
    return dbc_bytes(dbf_bytes([("CODMUNRES", 7), ("SEXO", 1), ("DTNASC", 8)], [(c, "1", d) for c, d in rows]))


def popsvs_zip(rows: list[tuple[str, str, str, str, str]], name: str) -> bytes:
    """A POPSBRyy.zip: (COD_MUN, ANO, SEXO, IDADE, POP) rows in one .dbf."""
    table = dbf_bytes([("COD_MUN", 6), ("ANO", 4), ("SEXO", 1), ("IDADE", 3), ("POP", 7)], rows)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(name.replace(".zip", ".dbf").replace(".ZIP", ".DBF"), table)
    return out.getvalue()


@contextmanager
def ftp_server(root: Path, *, max_bytes_per_connection: int | None = None) -> Iterator[str]:
    """An anonymous read-only FTP server over `root` on 127.0.0.1, without TLS (as DATASUS);
    `max_bytes_per_connection` drops each data connection after that many bytes."""
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import DTPHandler, FTPHandler
    from pyftpdlib.servers import FTPServer

    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)  # its thread must not log into a finished CLI's stream
    authorizer = DummyAuthorizer()
    authorizer.add_anonymous(str(root))

    class Dropping(DTPHandler):
        sent = 0

        def send(self, data):
            if max_bytes_per_connection is None:
                return super().send(data)
            sent = super().send(data[:max_bytes_per_connection - self.sent])
            self.sent += sent or 0
            if self.sent >= max_bytes_per_connection:
                self.handle_close()  # the transfer aborted mid-file, as DATASUS's server does
            return sent

    handler = type("Handler", (FTPHandler,), {"authorizer": authorizer, "dtp_handler": Dropping, "use_sendfile": False,
                                              "passive_ports": None, "banner": "local DATASUS"})
    server = FTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"ftp://127.0.0.1:{server.address[1]}"
    finally:
        server.close_all()
        thread.join(timeout=5)
