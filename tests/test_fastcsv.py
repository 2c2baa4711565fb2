"""The field-skipping reader: the same values as Arrow on files both accept, and it gives
up (so Arrow and the slow path decide) on anything outside its narrow grammar."""

from __future__ import annotations

import pyarrow as pa
import polars as pl
import pytest

from censo_forecast.inep import archive, catalog, fastcsv, ingest, synthetic
from conftest import FIXTURES


def _both(raw: bytes) -> tuple[pl.DataFrame | None, pl.DataFrame]:
    header = raw[: raw.find(b"\n")].decode("latin-1").strip().split(";")
    names = [c for c in header if c in catalog.CACHE_SCHEMA]
    frame = lambda arrays: pl.DataFrame({n: ingest._latin1_text(a) if a.type == pa.binary() else pl.from_arrow(a)  # noqa: E731
                                         for n, a in arrays.items()})
    ours = fastcsv.read(raw, header, names, catalog.CACHE_SCHEMA)
    return (None if ours is None else frame(ours)), frame(ingest._arrow_read(pa.py_buffer(raw), names))


def _csv(year: int) -> bytes:
    sim = synthetic.CensusSimulator(synthetic.SynthSettings([year], schools=40, seed=3))
    sim.initialise(year)
    return synthetic.frame_to_csv_bytes(sim.render(year)[0])


def test_same_values_as_arrow_on_every_synthetic_year(small_census):
    raw_dir, _ = small_census
    nulls = 0
    for year, path in sorted(ingest.raw_zips(raw_dir).items()):
        with archive.open_zip(path) as zf:
            member = archive.data_member(zf, year, path)
        ours, arrow = _both(b"".join(archive.iter_member(path, member, 1 << 20)))
        assert ours is not None, year
        assert ours.equals(arrow), year
        nulls += sum(ours.null_count().row(0))
    assert nulls > 0  # the blanks of 2022 on became nulls, as in Arrow


def test_same_values_as_arrow_on_the_real_spreadsheet_damaged_extract():
    raw = (FIXTURES / "niteroi_2023_extract.csv").read_bytes()
    assert b"\r\n" in raw and b"E+13" in raw  # CRLF, and damage in columns we skip
    ours, arrow = _both(raw)
    assert ours is not None and ours.equals(arrow) and ours.height == 13


def test_blank_and_dot_are_null_and_negative_numbers_parse():
    raw = _csv(2021)
    lines = raw.split(b"\n")
    header = lines[0].decode().split(";")
    row = lines[1].split(b";")
    row[header.index("QT_MAT_BAS")] = b"."
    row[header.index("QT_MAT_MED")] = b""
    row[header.index("IN_INTERNET")] = b"-1"
    row[header.index("NO_ENTIDADE")] = b"ESCOLA S\xc3O JO\xc3O"  # latin-1 bytes, kept as they are
    lines[1] = b";".join(row)
    ours, arrow = _both(b"\r\n".join(lines))
    assert ours is not None and ours.equals(arrow)
    first = ours.row(0, named=True)
    assert first["QT_MAT_BAS"] is None and first["QT_MAT_MED"] is None and first["IN_INTERNET"] == -1
    assert first["NO_ENTIDADE"] == "ESCOLA SÃO JOÃO"


@pytest.mark.parametrize("damage", ["ragged", "lone_cr_kept", "lone_cr_skipped", "mangled", "overflow", "plus_sign", "spaces"])
def test_gives_up_outside_its_grammar(damage):
    raw = _csv(2019)
    lines = raw.split(b"\n")
    header = lines[0].decode().split(";")
    row = lines[2].split(b";")
    if damage == "ragged":
        row.append(b"extra")
    elif damage == "lone_cr_kept":
        row[header.index("NO_ENTIDADE")] = b"ESCOLA\rX"  # Arrow would end the line there
    elif damage == "lone_cr_skipped":
        row[header.index("CO_DISTRITO")] = b"33\r"
    elif damage == "mangled":
        row[header.index("QT_MAT_FUND_AI")] = b"2,85E+13"
    elif damage == "overflow":
        row[header.index("TP_DEPENDENCIA")] = b"300"  # Int8
    elif damage == "plus_sign":
        row[header.index("QT_MAT_BAS")] = b"+5"
    else:
        row[header.index("QT_MAT_BAS")] = b" 5"
    lines[2] = b";".join(row)
    raw = b"\n".join(lines)
    names = [c for c in header if c in catalog.CACHE_SCHEMA]
    assert fastcsv.read(raw, header, names, catalog.CACHE_SCHEMA) is None


def test_header_only_and_no_header():
    raw = _csv(2018)
    header_line = raw[: raw.find(b"\n") + 1]
    header = header_line.decode().strip().split(";")
    names = [c for c in header if c in catalog.CACHE_SCHEMA]
    empty = fastcsv.read(header_line, header, names, catalog.CACHE_SCHEMA)
    assert empty is not None and all(len(a) == 0 for a in empty.values())
    assert fastcsv.read(header_line.rstrip(b"\n"), header, names, catalog.CACHE_SCHEMA) is None
