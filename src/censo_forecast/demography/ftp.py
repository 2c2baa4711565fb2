"""DATASUS's FTP server, with the census downloader's care: TLS where offered, resume, retries.

- TLS: explicit FTPS (AUTH TLS, then a protected data channel), the server's certificate
  verified against certifi's roots and any `--ca-bundle`. A server that refuses AUTH TLS
  (DATASUS's did, when this was written) is refused in turn unless the user allows plain
  FTP (`--plain-ftp`, or an `ftp+plain://` address for a mirror); the files are then checked
  by their size and by decoding them, and the log says once that the channel was plain.
- A transfer goes to NAME.part and resumes with REST from what it holds after a dropped
  connection; failures without progress are retried with jittered exponential back-off.
"""

from __future__ import annotations

import ftplib
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import urlparse

import certifi

from censo_forecast import atomic

log = logging.getLogger(__name__)

TRANSIENT = (OSError, EOFError, ftplib.error_temp, ftplib.error_reply, ssl.SSLError)


class FtpError(Exception):
    """A server or file that cannot be used; the message names the address and why."""


class NotOnServer(FtpError):
    """The server has no such file (550)."""


@dataclass
class FtpOptions:
    url: str = "ftp://ftp.datasus.gov.br"
    plain: bool = False  # allow plain FTP when the server offers no TLS
    ca_bundle: Path | None = None
    retries: int = 8  # consecutive failures without progress before a file gives up
    timeout_s: float = 60.0
    backoff_s: float = 1.0
    backoff_cap_s: float = 60.0


class Server:
    """One connection to the server, reopened after a failure."""

    def __init__(self, opts: FtpOptions):
        self.opts = opts
        address = urlparse(opts.url)
        if address.scheme not in ("ftp", "ftps", "ftp+plain"):
            raise FtpError(f"{opts.url}: unknown protocol {address.scheme!r}; expected ftp://host[:port]")
        self.host, self.port = address.hostname or "", address.port or 21
        self.plain_allowed = opts.plain or address.scheme == "ftp+plain"
        self.tls_required = address.scheme == "ftps"
        self.connection: ftplib.FTP | None = None
        self.said_plain = False

    def describe(self, path: str = "") -> str:
        return f"ftp://{self.host}{'' if self.port == 21 else f':{self.port}'}{path}"

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=certifi.where())
        if self.opts.ca_bundle is not None:
            try:
                context.load_verify_locations(cafile=str(self.opts.ca_bundle))
            except (OSError, ssl.SSLError) as exc:
                raise FtpError(f"--ca-bundle {self.opts.ca_bundle}: cannot load certificates ({exc})") from None
        return context

    def connect(self) -> ftplib.FTP:
        if self.connection is not None:
            return self.connection
        secure = ftplib.FTP_TLS(context=self._context(), timeout=self.opts.timeout_s)
        try:
            secure.connect(self.host, self.port)
        except (OSError, EOFError) as exc:
            raise FtpError(f"{self.describe()}: cannot connect ({exc}); is the host reachable from this machine?") from None
        try:
            secure.auth()
        except ftplib.error_perm as exc:  # no TLS on this server
            secure.close()
            if not self.plain_allowed or self.tls_required:
                raise FtpError(f"{self.describe()} offers no TLS ({str(exc).strip()}); pass --plain-ftp to fetch over "
                               "plain FTP (the files are then checked by size and by decoding them)") from None
            plain = ftplib.FTP(timeout=self.opts.timeout_s)
            plain.connect(self.host, self.port)
            plain.login()
            if not self.said_plain:
                log.warning("%s offers no TLS: plain FTP, as --plain-ftp allows; files are checked by size and decoding",
                            self.describe())
                self.said_plain = True
            self.connection = plain
            return plain
        except ssl.SSLError as exc:
            secure.close()
            raise FtpError(f"{self.describe()}: TLS verification failed ({exc}); --ca-bundle adds a certificate") from None
        secure.login()
        secure.prot_p()
        self.connection = secure
        return secure

    def close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.quit()
            except (*TRANSIENT, ftplib.Error):
                self.connection.close()
            self.connection = None

    def _reset(self) -> None:
        if self.connection is not None:
            self.connection.close()
        self.connection = None

    def _retrying(self, what: str, action: Callable[[ftplib.FTP], object], progress: Callable[[], int] | None = None):
        """`action` on a live connection, reconnecting and backing off after a transient failure;
        gives up after `retries` failures in a row without progress (`progress`: bytes held)."""
        failures, held = 0, progress() if progress else 0
        while True:
            try:
                return action(self.connect())
            except atomic.DiskFull:
                raise  # no retry makes room
            except ftplib.error_perm as exc:
                if str(exc).startswith("550"):
                    raise NotOnServer(f"{what}: not on the server ({str(exc).strip()})") from None
                raise FtpError(f"{what}: refused ({str(exc).strip()})") from None
            except (TimeoutError, *TRANSIENT) as exc:
                self._reset()
                now = progress() if progress else 0
                failures = 1 if now > held else failures + 1
                held = now
                if failures >= self.opts.retries:
                    raise FtpError(f"{what}: {type(exc).__name__}: {exc}; gave up after {failures} attempts without "
                                   "progress (rerun to resume)") from None
                log.warning("%s: %s: %s; retry %d of %d", what, type(exc).__name__, exc, failures, self.opts.retries - 1)
                delay = min(self.opts.backoff_cap_s, self.opts.backoff_s * 2 ** (failures - 1))
                time.sleep(delay * random.uniform(0.5, 1.5))

    def listing(self, folder: str) -> list[str]:
        """The file names in a folder (empty when the server has no such folder)."""
        try:
            names = cast(list[str], self._retrying(self.describe(folder), lambda c: c.nlst(folder)))
        except NotOnServer:
            return []
        return [str(n).rsplit("/", 1)[-1] for n in names]

    def stat(self, path: str) -> tuple[int, str]:
        """(size in bytes, modification time as the server says it) of a file."""
        def both(c: ftplib.FTP) -> tuple[int, str]:
            c.voidcmd("TYPE I")
            size = c.size(path)
            try:
                modified = c.voidcmd(f"MDTM {path}").split()[-1]
            except ftplib.error_perm:
                modified = ""
            return int(size or 0), modified

        return cast(tuple[int, str], self._retrying(self.describe(path), both))

    def fetch(self, path: str, part: Path, size: int) -> None:
        """The file into `part`, resumed from what `part` holds; its size checked at the end."""
        def retrieve(c: ftplib.FTP) -> None:
            have = part.stat().st_size if part.exists() else 0
            if have > size:
                part.unlink()
                have = 0
            if have == size:
                return
            with open(part, "ab") as out:
                def keep(block: bytes) -> None:
                    try:
                        out.write(block)
                    except OSError as exc:
                        raise (atomic.disk_full(exc, part) or exc) from None

                c.retrbinary(f"RETR {path}", keep, rest=have or None)

        self._retrying(self.describe(path), retrieve, lambda: part.stat().st_size if part.exists() else 0)
        got = part.stat().st_size if part.exists() else 0
        if got != size:
            part.unlink(missing_ok=True)
            raise FtpError(f"{self.describe(path)}: received {got} bytes, the server announced {size}; removed (rerun)")
