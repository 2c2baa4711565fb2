"""Safe access to INEP's yearly zips: member lookup, CRC-checked reads, integrity checks.

Nothing is ever extracted to disk: members are read straight out of the zip."""

from __future__ import annotations

import hashlib
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import ModuleType

from censo_forecast.inep import catalog

_inflate_lib: ModuleType
try:  # ISA-L inflates about twice as fast as zlib; same format, optional
    from isal import isal_zlib as _inflate_lib
except ImportError:  # pragma: no cover - platforms without isal wheels
    _inflate_lib = zlib


class ArchiveError(Exception):
    """A zip that cannot be used; the message names the file and what is wrong."""


class UnsupportedCompression(ArchiveError):
    """A member compressed with a method Python cannot read (Deflate64, for one)."""


# Guards against zip bombs, from the real files: INEP's tables are 190-220 MB at most and
# compress about 6-7 times (the one-table CSVs in 26-34 MB zips; 2025's tables likewise). A
# member declaring more than MAX_MEMBER_BYTES (about 18 times the largest real table) or
# compressed more than MAX_COMPRESSION_RATIO times (7 times the real ratio) is refused before
# anything is inflated, and no member is ever inflated past the size it declares.
MAX_MEMBER_BYTES = 4 * 1024**3
MAX_COMPRESSION_RATIO = 50


def open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise ArchiveError(f"{path}: file not found") from None
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArchiveError(f"{path}: not a readable zip ({exc}); truncated or corrupt download?") from None


def find_member(zf: zipfile.ZipFile, pattern, path: Path, what: str) -> zipfile.ZipInfo:
    matches = [info for info in zf.infolist() if not info.is_dir() and pattern.search(info.filename)]
    if not matches:
        names = ", ".join(i.filename for i in zf.infolist()[:8])
        raise ArchiveError(f"{path}: no {what} member matching {pattern.pattern!r} (members: {names} ...)")
    if len(matches) > 1:
        raise ArchiveError(f"{path}: several {what} members match: {[m.filename for m in matches]}")
    return matches[0]


SINGLE_TABLE = "microdados_ed_basica"  # the key of census_members for the one-table layout


def census_members(zf: zipfile.ZipFile, year: int, path: Path) -> dict[str, zipfile.ZipInfo]:
    """The zip's data tables, recognised by their base names, whatever the year:
    {"microdados_ed_basica": ...} (one school table, INEP's layout up to 2024) or
    {"Escola": ..., "Matricula": ..., "Turma": ..., "Docente": ...} (the layout from 2025)."""
    names = [i for i in zf.infolist() if not i.is_dir()]
    single = [i for i in names if catalog.data_member_re(year).search(i.filename)]
    tables = {t: [i for i in names if catalog.table_member_re(t, year).search(i.filename)] for t in catalog.TABLES}
    if any(tables.values()):
        if single:
            raise ArchiveError(f"{path}: holds both layouts for {year} ({single[0].filename} and Tabela_* files); "
                               "which one to read is ambiguous")
        missing = [f"Tabela_{t}_{year}" for t, found in tables.items() if not found]
        if missing:
            listed = ", ".join(i.filename for i in names if catalog.any_table_re(year).search(i.filename))
            raise ArchiveError(f"{path}: multi-table layout without table(s) {', '.join(missing)} (tables present: {listed})")
        several = {t: [i.filename for i in found] for t, found in tables.items() if len(found) > 1}
        if several:
            raise ArchiveError(f"{path}: several members for one table: {several}")
        return {t: found[0] for t, found in tables.items()}
    return {SINGLE_TABLE: find_member(zf, catalog.data_member_re(year), path, f"data CSV for {year} (or Tabela_Escola_{year})")}


def integrity_members(zf: zipfile.ZipFile, year: int, path: Path) -> list[zipfile.ZipInfo]:
    """Every data table of the year (in the multi-table layout, Gestor_Escolar and Curso_Tecnico too)."""
    members = census_members(zf, year, path)
    if SINGLE_TABLE in members:
        return list(members.values())
    pattern = catalog.any_table_re(year)
    return [i for i in zf.infolist() if not i.is_dir() and pattern.search(i.filename)]


def md5_member(zf: zipfile.ZipFile, year: int) -> zipfile.ZipInfo | None:
    pattern = catalog.md5_member_re(year)
    found = [i for i in zf.infolist() if pattern.search(i.filename)]
    return found[0] if found else None


def _plain(info: zipfile.ZipInfo) -> bool:
    """Stored or deflated and not encrypted: read here, without zipfile's slower reader."""
    return info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) and not info.flag_bits & 0x1


def _seek_data(fh, path: Path, info: zipfile.ZipInfo) -> None:
    fh.seek(info.header_offset)
    local = fh.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise ArchiveError(f"{path}: member {info.filename} has no valid local header (corrupt zip)")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    fh.seek(info.header_offset + 30 + name_len + extra_len)


def _check_crc(path: Path, info: zipfile.ZipInfo, crc: int, size: int) -> None:
    if crc != info.CRC or size != info.file_size:
        raise ArchiveError(f"{path}: member {info.filename} is damaged (CRC or size mismatch: {size} of {info.file_size} bytes)")


def check_declared(path: Path, info: zipfile.ZipInfo) -> None:
    """Refuse, before inflating, a member whose declared size or compression ratio is far
    beyond any real census table's (see MAX_MEMBER_BYTES, MAX_COMPRESSION_RATIO)."""
    if info.file_size > MAX_MEMBER_BYTES:
        raise ArchiveError(f"{path}: member {info.filename} declares {info.file_size:,} bytes, beyond the "
                           f"{MAX_MEMBER_BYTES:,} of any census table; refused (zip bomb?)")
    if info.compress_size and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO:
        raise ArchiveError(f"{path}: member {info.filename} expands {info.file_size / info.compress_size:.0f} times "
                           f"(census tables: about 7, limit {MAX_COMPRESSION_RATIO}); refused (zip bomb?)")


def _larger_than_declared(path: Path, info: zipfile.ZipInfo) -> ArchiveError:
    return ArchiveError(f"{path}: member {info.filename} inflates to more than the {info.file_size:,} bytes it declares; "
                        "refused (a lying header: zip bomb?)")


def read_member(path: Path, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes as one buffer, CRC-checked: one read and one inflate, stopped at the
    size the member declares (no pieces to join: a third less time in the kernel for a census CSV)."""
    check_declared(path, info)
    if not _plain(info):
        return b"".join(iter_member(path, info, 8 << 20))
    with open(path, "rb") as fh:
        _seek_data(fh, path, info)
        data = fh.read(info.compress_size)
    if len(data) < info.compress_size:
        raise ArchiveError(f"{path}: member {info.filename} is truncated")
    if info.compress_type == zipfile.ZIP_DEFLATED:
        inflater = _inflate_lib.decompressobj(-15)
        try:
            data = inflater.decompress(data, max(1, info.file_size))
        except Exception as exc:  # zlib.error or isal's equivalent
            raise ArchiveError(f"{path}: member {info.filename} is damaged ({exc})") from None
        if inflater.unconsumed_tail:
            raise _larger_than_declared(path, info)
    _check_crc(path, info, _inflate_lib.crc32(data), len(data))
    return data


def iter_member(path: Path, info: zipfile.ZipInfo, block_bytes: int) -> Iterator[bytes]:
    """A member's bytes, inflated from compressed reads of block_bytes, CRC-checked at the end;
    it stops as soon as the member yields more than it declares."""
    check_declared(path, info)
    if not _plain(info):
        with zipfile.ZipFile(path) as zf:  # other methods: the standard reader
            try:
                fh = zf.open(info)
            except NotImplementedError as exc:
                raise UnsupportedCompression(
                    f"unsupported zip compression in {path}, member {info.filename} ({exc}); re-zip it with ordinary deflate"
                ) from None
            with fh:
                produced = 0
                while chunk := fh.read(block_bytes):
                    produced += len(chunk)
                    if produced > info.file_size:
                        raise _larger_than_declared(path, info)
                    yield chunk
        return
    inflater = _inflate_lib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
    crc, size = 0, 0
    with open(path, "rb") as fh:
        _seek_data(fh, path, info)
        remaining = info.compress_size
        while remaining > 0 or inflater is not None:
            raw = fh.read(min(block_bytes, remaining)) if remaining > 0 else b""
            if remaining > 0 and not raw:
                raise ArchiveError(f"{path}: member {info.filename} is truncated")
            remaining -= len(raw)
            try:
                if inflater is None:
                    out = raw
                elif raw:
                    out = inflater.decompress(raw, info.file_size - size + 1)  # one byte past: a lie shows
                    if inflater.unconsumed_tail:
                        raise _larger_than_declared(path, info)
                else:
                    out, inflater = inflater.flush(), None
            except Exception as exc:  # zlib.error or isal's equivalent
                raise ArchiveError(f"{path}: member {info.filename} is damaged ({exc})") from None
            crc = _inflate_lib.crc32(out, crc)
            size += len(out)
            if size > info.file_size:
                raise _larger_than_declared(path, info)
            if out:
                yield out
    _check_crc(path, info, crc, size)


def verify_zip(path: Path, year: int) -> list[str]:
    """Check the central directory, each data table's CRC and INEP's md5 file; return the tables' names."""
    with open_zip(path) as zf:
        checked = []
        for info in integrity_members(zf, year, path):
            md5 = hashlib.md5()
            try:
                for chunk in iter_member(path, info, 8 << 20):  # CRC checked at the end
                    md5.update(chunk)
            except (OSError, EOFError, ValueError) as exc:
                raise ArchiveError(f"{path}: member {info.filename} is damaged ({exc})") from None
            expected = _expected_md5(zf, year, info, path)
            if expected is not None and expected != md5.hexdigest():
                raise ArchiveError(
                    f"{path}: md5 of {info.filename} is {md5.hexdigest()}, "
                    f"but the archive's md5 file says {expected}"
                )
            checked.append(info.filename)
        return checked


def _expected_md5(zf: zipfile.ZipFile, year: int, data: zipfile.ZipInfo, path: Path) -> str | None:
    member = md5_member(zf, year)
    if member is None:
        return None
    data_base = PurePosixPath(data.filename).name.lower()
    for line in zf.read(member).decode("latin-1").splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2 and parts[1].lstrip("*").strip().lower() == data_base:
            return parts[0].lower()
    raise ArchiveError(f"{path}: {member.filename} has no line for {data.filename}")
