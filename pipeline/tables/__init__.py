"""The canonical tables built from the raw files, and the users' roles: what the ``prepare``
and ``split`` stages call.

- :mod:`pipeline.tables.parse`: raw files -> Parquet parts, cached by checksum (resume);
- :mod:`pipeline.tables.buckets`: key ranges that cut a table into parts that fit in memory;
- :mod:`pipeline.tables.interactions`: duplicate (user, item) rows merged, the k-core filter;
- :mod:`pipeline.tables.entities`: the items and users tables derived from the interactions;
- :mod:`pipeline.tables.assemble`: the three tables written one key range at a time;
- :mod:`pipeline.tables.stats`: ``metrics/data_stats.json``.
- :mod:`pipeline.tables.roles`: the cold-start role of every user of a (source, target) pair.

Everything past parsing is a polars lazy query run with the streaming engine; what has to
hold every key at once (a group-by, a sort, a join) runs one range of users or items at a
time, so memory stays bounded whatever the size of the release.
"""

STREAMING = {"engine": "streaming"}  # collect(**STREAMING)
