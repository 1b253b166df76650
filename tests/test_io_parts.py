"""RotatingParquetWriter: parts rotate by row count, tables stay whole, metadata on every part."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io import read_meta
from pipeline.io.parts import RotatingParquetWriter

SCHEMA = pa.schema([("key", pa.string()), ("value", pa.int64())])


def _table(start: int, n: int) -> pa.Table:
    values = list(range(start, start + n))
    return pa.table({"key": [str(v) for v in values], "value": values}, schema=SCHEMA)


def test_parts_rotate_between_tables_and_keep_each_table_whole(tmp_path):
    writer = RotatingParquetWriter(tmp_path, SCHEMA, rows_per_part=5, meta={"stage": "t"})
    for start, n in [(0, 3), (3, 3), (6, 4), (10, 1), (11, 0)]:
        writer.write(_table(start, n))
    writer.close()

    # 3 + 3 = 6 fills the first part past 5; the second write of 4 + 1 fills the next to 5.
    assert writer.parts == ["part-00000.parquet", "part-00001.parquet"]
    assert writer.part_rows == [6, 5]
    assert writer.rows == 11
    assert sorted(p.name for p in tmp_path.iterdir()) == writer.parts
    first = pq.read_table(tmp_path / "part-00000.parquet")
    assert first.column("value").to_pylist() == [0, 1, 2, 3, 4, 5]
    assert [rg.num_rows for rg in _row_groups(tmp_path / "part-00000.parquet")] == [3, 3]
    second = pq.read_table(tmp_path / "part-00001.parquet")
    assert second.column("value").to_pylist() == [6, 7, 8, 9, 10]
    for name in writer.parts:
        assert read_meta(tmp_path / name) == {"stage": "t"}
        assert pq.read_schema(tmp_path / name).names == SCHEMA.names


def _row_groups(path):
    meta = pq.read_metadata(path)
    return [meta.row_group(i) for i in range(meta.num_row_groups)]


def test_room_sizes_tables_to_exact_parts(tmp_path):
    writer = RotatingParquetWriter(tmp_path, SCHEMA, rows_per_part=4, prefix="part-007")
    assert writer.room == 4
    writer.write(_table(0, 3))
    assert writer.room == 1
    writer.write(_table(3, 1))
    assert writer.room == 4  # full: the next write opens a new part
    writer.write(_table(4, 2))
    writer.close()
    assert writer.parts == ["part-007-00000.parquet", "part-007-00001.parquet"]
    assert writer.part_rows == [4, 2]


def test_nothing_written_leaves_one_empty_part_with_the_schema(tmp_path):
    writer = RotatingParquetWriter(tmp_path, SCHEMA, rows_per_part=10)
    writer.write(_table(0, 0))
    writer.close()
    assert writer.parts == ["part-00000.parquet"]
    assert writer.part_rows == [0]
    assert writer.rows == 0
    table = pq.read_table(tmp_path / "part-00000.parquet")
    assert table.num_rows == 0
    assert table.schema.names == SCHEMA.names


def test_abort_drops_the_open_part_only(tmp_path):
    writer = RotatingParquetWriter(tmp_path, SCHEMA, rows_per_part=2)
    writer.write(_table(0, 2))
    writer.write(_table(2, 1))  # opens part 1
    writer.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.parquet"]


def test_abort_before_any_part_is_finished_leaves_nothing(tmp_path):
    writer = RotatingParquetWriter(tmp_path, SCHEMA, 10)
    writer.write(_table(0, 1))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_tables_are_cast_to_the_schema(tmp_path):
    loose = pa.table({"key": ["a"], "value": pa.array([1], pa.int32())})
    writer = RotatingParquetWriter(tmp_path, SCHEMA, 10)
    writer.write(loose)
    writer.close()
    assert pq.read_schema(tmp_path / "part-00000.parquet").field("value").type == pa.int64()


def test_rows_per_part_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="rows_per_part"):
        RotatingParquetWriter(tmp_path, SCHEMA, 0)
