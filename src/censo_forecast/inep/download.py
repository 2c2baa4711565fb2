"""Download INEP's yearly zips: discover, stream with resume and retries, verify, then rename.

INEP's server drops connections mid-transfer, omits an intermediate TLS certificate and
silently re-issues files, so every transfer goes to NAME.part, resumes with Range/If-Range,
retries with jittered exponential back-off (honouring Retry-After), checks Content-Length,
the zip's central directory, CRC and md5 file, and only then is renamed into place.
A manifest (size, ETag, Last-Modified, sha256) tells an unchanged file from a re-issued one.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import re
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from urllib.parse import urljoin, urlparse

import certifi
import httpx

from censo_forecast import atomic, config, runlog, storage
from censo_forecast.inep import archive, catalog

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RETRY_STATUSES = {429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 300.0


class DownloadError(Exception):
    """A year that could not be fetched; the message names the URL or path and why."""


@dataclass
class DownloadOptions:
    base_url: str = catalog.BASE_URL
    listing_url: str | None = catalog.LISTING_URL
    ca_bundle: Path | None = None
    insecure: bool = False
    retries: int = config.default("retries")  # consecutive failures without progress before giving up
    timeout_s: float = config.default("timeout_s")  # per request: connecting, or waiting for the next bytes
    # per file: the longest total wait without receiving a byte, over every retry (None: 3 x timeout_s)
    max_wait_s: float | None = None
    backoff_s: float = 1.0  # first back-off; doubles up to backoff_cap_s
    backoff_cap_s: float = 60.0
    jobs: int = config.default("jobs")
    progress: bool | None = None  # None: a bar on a terminal, log lines otherwise


@dataclass
class DownloadReport:
    downloaded: list[int] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)  # requested years the server does not have
    failed: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.failed

    def problems(self) -> list[str]:
        """One line per year that did not arrive, for error messages."""
        lines = [f"year {y}: not offered by the server" for y in self.missing]
        return lines + [f"year {y}: {m}" for y, m in sorted(self.failed.items())]


# ------------------------------------------------------------------------- TLS
def inep_intermediate_pem() -> str:
    return resources.files("censo_forecast.inep").joinpath("certs").joinpath("rnp-icpedu-gr46-ov-tls-ca-2025.pem").read_text("ascii")


def ssl_context(extra_ca: Path | None = None, add_inep_intermediate: bool = False) -> ssl.SSLContext:
    """certifi's roots, plus INEP's missing intermediate (for its host only) and any user bundle."""
    ctx = ssl.create_default_context(cafile=certifi.where())
    if add_inep_intermediate:
        ctx.load_verify_locations(cadata=inep_intermediate_pem())
    if extra_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(extra_ca))
        except (OSError, ssl.SSLError) as exc:
            raise DownloadError(f"--ca-bundle {extra_ca}: cannot load certificates ({exc})") from None
    return ctx


def plain_http_allowed(opts: DownloadOptions) -> bool:
    """Plain http only where the user asked for it: an http:// base URL (a mirror they chose)."""
    return urlparse(opts.base_url).scheme == "http"


def _refuse_downgrade(opts: DownloadOptions):
    """A response hook: an https response that redirects to http is refused, never followed."""
    def check(response: httpx.Response) -> None:
        if response.is_redirect and not plain_http_allowed(opts):
            target = response.url.join(response.headers.get("location", ""))
            if response.url.scheme == "https" and target.scheme == "http":
                raise DownloadError(f"{response.url} redirects to {target}: refused, a download never goes from https "
                                    "to plain http (pass an http:// --base-url yourself to allow a plain-http mirror)")
    return check


def make_client(opts: DownloadOptions) -> httpx.Client:
    timeout = httpx.Timeout(opts.timeout_s, connect=min(opts.timeout_s, 20.0))
    headers = {"User-Agent": "censo-forecast (+https://pypi.org/project/censo-forecast/)"}
    hooks = {"response": [_refuse_downgrade(opts)]}
    if opts.insecure:
        log.warning("!" * 72)
        log.warning("--insecure: TLS certificate verification is OFF. Anyone on the network path")
        log.warning("can substitute the census files. Use --ca-bundle instead if you can.")
        log.warning("!" * 72)
        return httpx.Client(verify=False, timeout=timeout, headers=headers, follow_redirects=True, event_hooks=hooks)
    inep = httpx.HTTPTransport(verify=ssl_context(opts.ca_bundle, add_inep_intermediate=True))
    return httpx.Client(
        verify=ssl_context(opts.ca_bundle),
        mounts={f"https://{catalog.INEP_HOST}": inep},
        timeout=timeout,
        headers=headers,
        follow_redirects=True,
        event_hooks=hooks,
    )


# ------------------------------------------------------------------ discovery
def _max_wait(opts: DownloadOptions) -> float:
    return opts.max_wait_s if opts.max_wait_s is not None else 3 * opts.timeout_s


def discover(client: httpx.Client, opts: DownloadOptions, wanted: list[int] | None,
             unreachable: dict[int, str] | None = None) -> dict[int, str]:
    """Years the server offers -> URL. The listing page first; HEAD on the URL pattern as fallback.
    A year whose probe does not answer goes into `unreachable` (year -> why), not into an error
    that would stop the other years."""
    found: dict[int, str] = {}
    if opts.listing_url:
        try:
            page = _request(client, "GET", opts.listing_url, opts)
            found = listing_links(page.text, str(page.url))
            log.info("listing %s offers %d year(s): %s", opts.listing_url, len(found), sorted(found))
        except DownloadError as exc:
            log.warning("listing page unreachable (%s); probing %s by HEAD instead", exc, opts.base_url)
    candidates = wanted if wanted is not None else (
        [] if found else list(range(catalog.DEFAULT_FIRST_YEAR, datetime.now().year + 1))
    )
    for year in candidates:
        if year in found or (unreachable and year in unreachable):
            continue
        for republished in (True, False):  # a re-publication supersedes the first release
            url = catalog.zip_url(year, opts.base_url, republished)
            try:
                _request(client, "HEAD", url, opts)
                found[year] = url
                break
            except _NotFound:
                continue
            except DownloadError as exc:
                if unreachable is None:
                    raise
                # a host that refuses connections fails every year alike: say so for all of them at once,
                # each year naming its own URL (not the one that was probed)
                unreachable[year] = str(exc)
                if isinstance(exc, _Unreachable):
                    unreachable.update({
                        y: f"{catalog.zip_url(y, opts.base_url)}: not tried, {urlparse(url).netloc} refused the "
                           f"connection for {year} ({UNREACHABLE_HINT})"
                        for y in candidates if y not in found and y not in unreachable
                    })
                break
    if wanted is None:
        return {y: u for y, u in found.items() if y >= catalog.DEFAULT_FIRST_YEAR}
    return {y: found[y] for y in wanted if y in found}


_HREF_RE = re.compile(r"""href\s*=\s*["']([^"'#]+)["']""", re.IGNORECASE)


def listing_links(html: str, page_url: str) -> dict[int, str]:
    """Census zips linked from INEP's listing page, by year, as absolute URLs; where a year
    has a re-publication (microdados_censo_escolar_YYYY_.zip), that one."""
    found: dict[int, tuple[bool, str]] = {}
    for href in _HREF_RE.findall(html):
        path = href.strip().split("?", 1)[0]
        m = catalog.LISTING_LINK_RE.search(path)
        if not m or m.end() != len(path):
            continue
        year, republished = int(m.group(1)), bool(m.group(2))
        if year not in found or (republished and not found[year][0]):
            found[year] = (republished, urljoin(page_url, href.strip()))
    return {year: url for year, (_, url) in found.items()}


# ------------------------------------------------------------------ requests
class _NotFound(DownloadError):
    pass


class _Unreachable(DownloadError):
    """The host does not accept connections at all."""


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max((when - datetime.now(timezone.utc)).total_seconds(), 0.0), MAX_RETRY_AFTER_S)


def _sleep_before_retry(attempt: int, opts: DownloadOptions, retry_after: float | None) -> None:
    delay = min(opts.backoff_cap_s, opts.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
    if retry_after is not None:
        delay = max(delay, retry_after)
    time.sleep(delay)


CONNECT_ATTEMPTS = 3  # a host that cannot be reached at all is not worth minutes of back-off
UNREACHABLE_HINT = "is the host reachable from this machine? use --offline with local zips"


def _request(client: httpx.Client, method: str, url: str, opts: DownloadOptions) -> httpx.Response:
    """A small request (listing, HEAD) with the same retry policy as transfers, except that
    failing to connect at all gives up after CONNECT_ATTEMPTS."""
    started = time.monotonic()
    for attempt in range(1, opts.retries + 1):
        waited = time.monotonic() - started
        if attempt > 1 and waited >= _max_wait(opts):
            raise DownloadError(f"{method} {url}: no usable answer in {waited:.0f} s ({attempt - 1} attempts of at most "
                                f"{opts.timeout_s:.0f} s each); gave up (--timeout sets the wait per request)")
        try:
            response = client.request(method, url)
        except httpx.TransportError as exc:
            unreachable = isinstance(exc, httpx.ConnectError)
            limit = min(opts.retries, CONNECT_ATTEMPTS) if unreachable else opts.retries
            if attempt >= limit:
                hint = f" ({UNREACHABLE_HINT})" if unreachable else ""
                raise (_Unreachable if unreachable else DownloadError)(f"{method} {url}: {type(exc).__name__}: {exc}{hint}") from None
            log.warning("%s %s: %s: %s; retry %d of %d", method, url, type(exc).__name__, exc, attempt, limit - 1)
            _sleep_before_retry(attempt, opts, None)
            continue
        if response.status_code == 404:
            raise _NotFound(f"{method} {url}: 404 Not Found")
        if response.status_code in RETRY_STATUSES and attempt < opts.retries:
            log.warning("%s %s: HTTP %d; retry %d of %d", method, url, response.status_code, attempt, opts.retries - 1)
            _sleep_before_retry(attempt, opts, _retry_after(response))
            continue
        if response.status_code >= 400:
            raise DownloadError(f"{method} {url}: HTTP {response.status_code}")
        return response
    raise DownloadError(f"{method} {url}: gave up after {opts.retries} attempts")  # pragma: no cover


@dataclass
class _Remote:
    url: str
    size: int | None
    etag: str | None
    last_modified: str | None

    @property
    def validator(self) -> str | None:
        """Strong ETag or Last-Modified, for If-Range: resume only if the file did not change."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


def _remote(response: httpx.Response, url: str) -> _Remote:
    size = response.headers.get("Content-Length")
    return _Remote(url, int(size) if size and size.isdigit() else None, response.headers.get("ETag"), response.headers.get("Last-Modified"))


# ------------------------------------------------------------------ transfers
class Downloader:
    """Fetches years into raw_dir; one instance per run, safe to use from several threads."""

    def __init__(self, raw_dir: Path, opts: DownloadOptions):
        self.raw_dir = Path(raw_dir)
        self.opts = opts
        self._lock = threading.Lock()
        self.manifest = storage.read_json_dict(self.raw_dir / MANIFEST, "download manifest")

    def _record(self, year: int, entry: dict) -> None:
        with self._lock:
            self.manifest[str(year)] = entry
            atomic.write_json(self.raw_dir / MANIFEST, self.manifest)

    def run(self, years: list[int] | None) -> DownloadReport:
        report = DownloadReport()
        try:
            self.raw_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DownloadError(f"cannot create {self.raw_dir}: {exc}") from None
        with make_client(self.opts) as client:
            unreachable: dict[int, str] = {}
            available = discover(client, self.opts, years, unreachable)
            report.failed.update(unreachable)
            for y, why in unreachable.items():
                log.error("year %d: %s", y, why)
            report.missing = [y for y in (years or []) if y not in available and y not in unreachable]
            for y in report.missing:
                log.error("year %d: not offered by %s (nor at %s)", y, self.opts.listing_url or "-", catalog.zip_url(y, self.opts.base_url))
            with ThreadPoolExecutor(max_workers=max(1, self.opts.jobs)) as pool:
                futures = {
                    pool.submit(self.fetch, client, year, url, slot % max(1, self.opts.jobs)): year
                    for slot, (year, url) in enumerate(sorted(available.items()))
                }
                for future in as_completed(futures):
                    year = futures[future]
                    try:
                        changed = future.result()
                    except DownloadError as exc:
                        report.failed[year] = str(exc)
                        log.error("year %d: %s", year, exc)
                    else:
                        (report.downloaded if changed else report.unchanged).append(year)
        report.downloaded.sort()
        report.unchanged.sort()
        return report

    def fetch(self, client: httpx.Client, year: int, url: str, slot: int = 0) -> bool:
        """Bring one year up to date; True if bytes were transferred. The zip keeps INEP's file
        name; a re-publication, once verified, replaces the year's earlier file."""
        if urlparse(url).scheme == "http" and not plain_http_allowed(self.opts):
            raise DownloadError(f"{self.opts.listing_url} links {url}, a plain-http URL: refused, a download never goes "
                                "from https to plain http (pass an http:// --base-url yourself to allow a plain-http mirror)")
        name = urlparse(url).path.rsplit("/", 1)[-1]
        if catalog.parse_zip_name(name) is None:
            name = catalog.zip_name(year)  # a mirror serving other names: ours
        dest = self.raw_dir / name
        remote = _remote(_request(client, "HEAD", url, self.opts), url)
        entry = self.manifest.get(str(year))
        if not isinstance(entry, dict) or (entry.get("file") or str(entry.get("url", "")).rsplit("/", 1)[-1]) != dest.name:
            entry = None  # recorded for another file of the year (the first release, say): not this one
        if dest.exists() and self._unchanged(entry, remote, dest):
            log.info("year %d: %s unchanged on the server; not fetched again", year, dest.name)
            return False
        for verify_attempt in (1, 2):
            self._transfer(client, year, remote, dest.with_name(dest.name + ".part"), slot)
            part = dest.with_name(dest.name + ".part")
            try:
                archive.verify_zip(part, year)
                break
            except archive.ArchiveError as exc:
                part.unlink(missing_ok=True)
                _meta(part).unlink(missing_ok=True)
                if verify_attempt == 2:
                    raise DownloadError(f"{url}: downloaded file is not a valid census zip ({exc}); not kept") from None
                log.warning("year %d: %s; downloading again from scratch", year, exc)
        sha256 = storage.sha256(part)
        try:
            os.replace(part, dest)
        except OSError as exc:
            raise DownloadError(f"cannot move {part} to {dest}: {exc}") from None
        _meta(part).unlink(missing_ok=True)
        self._record(year, {
            "file": dest.name, "url": url, "size": dest.stat().st_size, "etag": remote.etag,
            "last_modified": remote.last_modified, "sha256": sha256,
            "downloaded_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        log.info("year %d: %s verified and saved (%.1f MB)", year, dest.name, dest.stat().st_size / 1e6)
        for other in (catalog.zip_name(year, republished) for republished in (False, True)):
            if other != dest.name and (self.raw_dir / other).exists():
                (self.raw_dir / other).unlink()
                log.info("year %d: %s superseded by %s and removed", year, other, dest.name)
        return True

    def _unchanged(self, entry: dict | None, remote: _Remote, dest: Path) -> bool:
        size = dest.stat().st_size
        if remote.size is not None and remote.size != size:
            return False
        if entry is None:
            return False  # a file we did not fetch: verify by downloading (cheap next time)
        if entry.get("size") != size:
            return False
        if remote.etag or entry.get("etag"):
            return remote.etag == entry.get("etag")
        return remote.last_modified is not None and remote.last_modified == entry.get("last_modified")

    def _transfer(self, client: httpx.Client, year: int, remote: _Remote, part: Path, slot: int) -> None:
        opts = self.opts
        meta = _meta(part)
        if part.exists() and (not meta.exists() or meta.read_text().strip() != (remote.validator or "")):
            part.unlink()  # a partial file of another version of the remote file
        failures = 0
        total_attempts = 0
        last_progress = time.monotonic()
        bar = runlog.Progress(f"year {year}", remote.size, byte_units=True, position=slot, enabled=opts.progress, leave=False)
        try:
            while True:
                total_attempts += 1
                have = part.stat().st_size if part.exists() else 0
                if remote.size is not None and have == remote.size:
                    return
                if remote.size is not None and have > remote.size:
                    part.unlink()
                    have = 0
                headers = {}
                if have:
                    headers["Range"] = f"bytes={have}-"
                    if remote.validator:
                        headers["If-Range"] = remote.validator
                try:
                    got = self._stream(client, remote, part, have, headers, bar)
                except _Retryable as exc:
                    failures = 0 if exc.progress else failures + 1
                    last_progress = time.monotonic() if exc.progress else last_progress
                    stalled = time.monotonic() - last_progress
                    if failures >= opts.retries or total_attempts >= opts.retries * 25 or stalled >= _max_wait(opts):
                        raise DownloadError(f"{remote.url}: gave up after {total_attempts} attempts ({stalled:.0f} s "
                                            f"without a byte); last error: {exc}") from None
                    log.debug("year %d: %s; retrying (%d)", year, exc, failures)
                    if not exc.progress:
                        _sleep_before_retry(failures, opts, exc.retry_after)
                    continue
                if remote.size is None or got == remote.size:
                    return
                raise DownloadError(f"{remote.url}: server sent {got} bytes but announced {remote.size}")
        finally:
            bar.close()

    def _stream(self, client, remote: _Remote, part: Path, have: int, headers: dict, bar) -> int:
        try:
            with client.stream("GET", remote.url, headers=headers) as response:
                status = response.status_code
                if status == 404:
                    raise DownloadError(f"{remote.url}: 404 Not Found")
                if status in RETRY_STATUSES:
                    raise _Retryable(f"HTTP {status}", retry_after=_retry_after(response))
                if status >= 400:
                    raise DownloadError(f"{remote.url}: HTTP {status}")
                if status == 200 and have:
                    have = 0  # the server ignored the range (or the file changed): start over
                elif status == 206 and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                    raise _Retryable(f"unexpected Content-Range {response.headers.get('Content-Range')!r}")
                _meta(part).write_text((remote.validator or "") + "\n")
                expected = response.headers.get("Content-Length")
                received = 0
                bar.reset(have)
                try:
                    with open(part, "r+b" if have else "wb") as out:
                        out.seek(have)
                        out.truncate()
                        for chunk in response.iter_bytes():
                            out.write(chunk)
                            received += len(chunk)
                            bar.update(len(chunk))
                except OSError as exc:
                    full = atomic.disk_full(exc, part)
                    if full is not None:
                        raise full from None  # every other year would fail alike: the download stops
                    raise DownloadError(f"cannot write {part}: {exc}") from None
                if expected is not None and expected.isdigit() and received != int(expected):
                    raise _Retryable(f"body ended after {received} of {expected} bytes", progress=received > 0)
                return have + received
        except httpx.TransportError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}", progress=part.exists() and part.stat().st_size > have) from None


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None, progress: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.progress = progress


def _meta(part: Path) -> Path:
    return part.with_name(part.name + ".validator")


def download(raw_dir: Path, years: list[int] | None, opts: DownloadOptions) -> DownloadReport:
    """Fetch the requested years (None: every year the server offers) into raw_dir."""
    for url in (opts.base_url, opts.listing_url):
        if url and urlparse(url).scheme not in ("http", "https"):
            raise DownloadError(f"{url}: only http(s) URLs are supported")
        if url and urlparse(url).scheme == "http" and urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
            log.warning("%s is plain http: fine for a mirror on this machine, unsafe across a network", url)
    return Downloader(raw_dir, opts).run(years)
