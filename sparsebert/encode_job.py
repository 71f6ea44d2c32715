"""Embed a whole table of texts into Parquet, locally or on Ray Data, with every row accounted for.

The library side of `sparsebert encode --input rows.{txt,jsonl,parquet} --output out[.parquet]`:
`tables.scan_input` plans the input (count, id checksum, pieces), the pieces are embedded either in
this process (`Model.encode`, one piece at a time) or by a pool of Ray actors
(`ray_data.embed_pieces`), the driver writes results as they arrive (`tables.OutputWriter`, so the
output needs no filesystem shared with the workers), and `tables.verify_output` re-reads the written
ids: the job fails loudly unless every input id came out exactly once. Bad rows (empty, non-string)
come out with a null embedding and their reason; the summary lists the first of them by id.

Left out: resuming a stopped job (a rerun starts over; shards are renamed into place only when
complete, so a stopped job leaves no shard that looks finished), and writing from the workers.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Sequence

from .batching import check_positive, progress_bar
from .errors import SparseBertError
from .tables import (ROWS_PER_PIECE, OutputWriter, embed_rows, iter_pieces_rows, scan_input,
                     verify_output)

MAX_BAD_LISTED = 20


def _local_tables(plan, model_path, *, layers, batch_size, normalize, pooling, threads):
    from .api import load

    if threads is not None:
        import numba

        numba.set_num_threads(check_positive("threads", threads))
    model = load(model_path, layers=layers)
    for ids, texts, errors in iter_pieces_rows(plan):
        yield embed_rows(model, ids, texts, errors, plan.id_type, batch_size=batch_size,
                         normalize=normalize, pooling=pooling)


def encode_table(
    model_path: str | os.PathLike,
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    ray: bool = False,
    address: str | None = None,
    actors: int | None = None,
    cpus_per_actor: int = 1,
    threads: int | None = None,
    batch_size: int = 32,
    normalize: bool = True,
    pooling: str = "mean",
    layers: Sequence[int] | None = None,
    text_column: str = "text",
    id_column: str = "id",
    rows_per_piece: int = ROWS_PER_PIECE,
    rows_per_shard: int = 100_000,
    overwrite: bool = False,
    show_progress: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Embed every row of `input` into Parquet at `output`; return a summary dict.

    ray: run on Ray Data (a local cluster, or the one at `address`) with `actors` actors of
    `cpus_per_actor` CPUs each (default: as many as the cluster's CPUs allow); else in this process
    with `threads` Numba threads. on_progress(rows_done, rows_total) is called after each piece.
    Raises SparseBertError if the written output does not hold every input id exactly once.
    """
    batch_size = check_positive("batch_size", batch_size)
    rows_per_shard = check_positive("rows_per_shard", rows_per_shard)
    if ray:
        from .ray_data import require_ray

        require_ray()
    t0 = time.perf_counter()
    plan = scan_input(input, text_column=text_column, id_column=id_column, rows_per_piece=rows_per_piece)
    writer = OutputWriter(output, rows_per_shard=rows_per_shard, overwrite=overwrite)
    options = dict(layers=layers, batch_size=batch_size, normalize=normalize, pooling=pooling)
    if ray:
        from .ray_data import embed_pieces

        tables = embed_pieces(plan, model_path, address=address, actors=actors,
                              cpus_per_actor=cpus_per_actor, **options)
    else:
        tables = _local_tables(plan, model_path, threads=threads, **options)
    done, bad = 0, []
    with progress_bar(show_progress, plan.count, "encode", unit="row") as bar:
        for table in tables:
            writer.write(table)
            done += table.num_rows
            bar.update(table.num_rows)
            if len(bad) < MAX_BAD_LISTED and table.column("error").null_count < table.num_rows:
                for row_id, err in zip(table.column("id").to_pylist(), table.column("error").to_pylist()):
                    if err is not None and len(bad) < MAX_BAD_LISTED:
                        bad.append({"id": row_id, "error": err})
            if on_progress is not None:
                on_progress(done, plan.count)
    files = writer.close()
    elapsed = time.perf_counter() - t0
    check = verify_output(output, plan)
    return {
        "output": str(output), "files": len(files), "rows": check["rows"],
        "bad_rows": check["bad_rows"], "first_bad_rows": bad, "id_checksum": check["id_checksum"],
        "input_format": plan.format, "ids": plan.id_column or "row number",
        "engine": "ray" if ray else "local", "seconds": round(elapsed, 3),
        "rows_per_second": round(plan.count / elapsed, 1) if elapsed else None,
    }
