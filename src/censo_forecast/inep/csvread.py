"""One `;`-separated INEP table, read from its bytes: only the wanted columns, straight to
their cache types.

Arrow parses the latin-1 bytes as they are, projecting the needed columns straight to their
types and keeping text as bytes, so only the distinct names are decoded (no transcoding of
the whole file). Only a file that fails this fast path is transcoded and re-read as text,
so that a bad value in a column we need is reported with its file, column, line and text,
while damage in columns we skip (spreadsheet mangling, '.' placeholders) costs nothing.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from censo_forecast.inep import catalog


class IngestError(Exception):
    """A year that cannot be ingested; the message names zip, member, year and column or line."""


def header_of(raw: bytes, where: str) -> list[str]:
    end = raw.find(b"\n")
    header = (raw if end < 0 else raw[:end]).decode(catalog.CSV_ENCODING).strip().split(catalog.CSV_SEPARATOR)
    if header == [""]:
        raise IngestError(f"{where}: the file is empty (no header line)")
    return header


def read_table(raw: bytes, types: dict[str, pl.DataType], where: str, *, required: tuple[str, ...] = ()) -> pl.DataFrame:
    """The columns of `types` that the header has, typed; `required` ones must be there.

    `where` names the file for messages (zip, member, year). Dates and categories are
    finished here; columns the header lacks are simply not in the result.
    """
    header = header_of(raw, where)
    missing = [c for c in required if c not in header]
    if missing:
        raise IngestError(f"{where}: required column(s) missing from the header: {', '.join(missing)}")
    wanted = {c: types[c] for c in header if c in types}
    try:
        # one contiguous buffer: streaming the pieces to Arrow saved memory (~0.8 GB peak instead of
        # ~1.3 GB for 14 national years) but cost ~10 % in time, Arrow reading through Python
        frame = _fast_read(pa.py_buffer(raw), wanted)
    except pa.ArrowInvalid as exc:
        _explain_failure(raw, header, wanted, where, str(exc))  # always raises
    if frame.height == 0:
        raise IngestError(f"{where}: the file has a header but no rows")
    return frame.with_columns(_finish(n, t, frame) for n, t in wanted.items() if t in (pl.Date, pl.Categorical))


_ARROW_INTS: dict[pl.DataType, pa.DataType] = {pl.Int8(): pa.int8(), pl.Int16(): pa.int16(), pl.Int32(): pa.int32()}


def _fast_read(buffer: pa.Buffer, types: dict[str, pl.DataType]) -> pl.DataFrame:
    """Arrow parses the latin-1 bytes as they are: numbers straight to the cache types, text
    as binary (no UTF-8 check, so no transcoding of the whole file); only the text columns'
    distinct values are then decoded. Arrow also rejects rows with the wrong field count."""
    names = list(types)
    arrow = {n: _ARROW_INTS.get(t, pa.binary()) for n, t in types.items()}
    table = pacsv.read_csv(
        buffer,
        read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 20),  # years run in parallel instead
        parse_options=pacsv.ParseOptions(delimiter=catalog.CSV_SEPARATOR, quote_char=False),
        convert_options=pacsv.ConvertOptions(include_columns=names, column_types=arrow, check_utf8=False,
                                             null_values=["", "."], strings_can_be_null=True),
    )
    columns = {}
    for name in names:
        column = table.column(name)
        columns[name] = _latin1_text(column) if arrow[name] == pa.binary() else pl.from_arrow(column)
    return pl.DataFrame(columns)


def _latin1_text(column: pa.ChunkedArray) -> pl.Series:
    encoded = column.combine_chunks().dictionary_encode()
    text = pa.array([None if v is None else v.decode(catalog.CSV_ENCODING) for v in encoded.dictionary.to_pylist()], pa.string())
    return pl.Series(pc.take(text, encoded.indices)).cast(pl.String)


def _explain_failure(raw: bytes, header: list[str], types: dict[str, pl.DataType], where: str, arrow_message: str) -> None:
    """Slow path, only for a file that fails: read it as text to name the line and value at fault."""
    data = raw.decode(catalog.CSV_ENCODING).encode("utf-8").replace(b"\r\n", b"\n")
    _check_field_counts(data, len(header), where)
    _strict_cast(_read_csv(data, {n: pl.String() for n in types}, where), types, where, arrow_message)


def _read_csv(data: bytes, dtypes: dict, where: str) -> pl.DataFrame:
    """A text read with file line numbers, for the slow path."""
    try:
        return pl.read_csv(
            data,
            separator=catalog.CSV_SEPARATOR,
            columns=list(dtypes),
            schema_overrides=dtypes,
            infer_schema=False,
            quote_char=None,
            null_values=["."],
            row_index_name="_line",
            row_index_offset=2,  # the header is line 1
        )
    except pl.exceptions.PolarsError as exc:
        raise IngestError(f"{where}: the rows do not parse as ';'-separated fields ({exc})") from None


def _parse_type(dtype: pl.DataType) -> pl.DataType:
    return pl.String() if dtype in (pl.Date, pl.Categorical, pl.String) else dtype


def _finish(name: str, dtype: pl.DataType, frame: pl.DataFrame) -> pl.Expr:
    text = pl.col(name).str.strip_chars()
    if dtype == pl.Categorical:
        return text.cast(pl.Categorical())
    sample = frame[name].drop_nulls().head(1).to_list()
    return text.str.to_date(catalog.date_format_of(sample[0]) if sample else catalog.DATE_FORMAT, strict=False).alias(name)


def _check_field_counts(data: bytes, width: int, where: str) -> None:
    for offset, row in enumerate(data.split(b"\n")):
        fields = row.count(catalog.CSV_SEPARATOR.encode()) + 1
        if row.strip() and fields != width:
            raise IngestError(f"{where}: line {offset + 1} has {fields} fields, the header has {width}")


def _strict_cast(raw: pl.DataFrame, types: dict[str, pl.DataType], where: str, arrow_message: str = "") -> None:
    """Cast text columns one by one and raise on the first value that does not fit."""
    for name, dtype in types.items():
        text = raw[name].str.strip_chars()
        typed = text.cast(_parse_type(dtype), strict=False)
        bad = raw["_line"].filter(typed.is_null() & text.is_not_null() & (text != ""))
        if len(bad):
            value = raw[name][int(bad[0]) - 2]
            kind = "required" if name in catalog.REQUIRED_COLUMNS else "optional"
            raise IngestError(
                f"{where}: {kind} column {name}, line {int(bad[0])}: cannot read {value!r} as "
                f"{dtype} ({len(bad)} bad value(s) in this column)"
            )
    raise IngestError(f"{where}: the file does not parse, but no single value is at fault ({arrow_message})")
