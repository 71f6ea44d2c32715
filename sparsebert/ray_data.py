"""sparsebert on Ray Data: embed texts (or token ids) with a pool of actors, each holding one model.

    import ray, sparsebert.ray_data as sbr
    ds = ray.data.read_parquet("s3://bucket/passages/")              # columns id, text
    out = sbr.encode_dataset(ds, "/shared/models/minilm-90", actors=16)
    out.write_parquet("s3://bucket/embeddings/")                     # columns id, embedding, error

`Embedder` is the callable class `map_batches` runs on each actor: it loads the model once, from a
path every node can read, and sets Numba's thread count to the CPUs Ray gave the actor (Numba would
otherwise start one thread per core of the node on every actor). A batch of rows {id, text} becomes
{id, embedding, error}: ids are carried through so results join back to their inputs, and a bad row
(missing, non-string or empty text; token ids out of range) gets a null embedding and its reason
instead of failing the job. With `token_column`, rows hold token ids instead of texts.

`embed_pieces` is what `sparsebert encode --ray` runs: a dataset of small piece descriptions
(`tables.Piece`, a few thousand rows each) streams through the actor pool, each actor reads its
piece from the input file itself, and the results stream back to the driver; nothing is
materialised, so memory per actor is one model plus one piece. Ray Data restarts an actor whose
process died and reruns its unfinished pieces; `encode_table` then checks, from the written files,
that every id came out exactly once.

Left out: GPUs, autoscaling the pool, pipelines other than embeddings. Ray is imported only inside
these functions (`pip install 'sparsebert[ray]'`); `import sparsebert` never imports this module.
References: Ray Data batch inference, https://docs.ray.io/en/latest/data/batch_inference.html
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Sequence

import numpy as np

from .errors import InputError, SparseBertError, require


def require_ray():
    """The ray module, or MissingDependencyError with the pip line."""
    require("pyarrow", "'sparsebert[ray]'", "for Ray Data batch inference")
    return require("ray", "'sparsebert[ray]'", "for Ray Data batch inference")


def _actor_cpus() -> int:
    """CPUs Ray assigned to the calling actor or task (1 outside Ray, or for a fraction of a CPU)."""
    import ray

    if not ray.is_initialized():  # get_runtime_context() would start a local Ray instance
        return 1
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    return max(1, int(cpus))


class Embedder:
    """`map_batches` callable: rows {id_column, text_column} → {id, embedding, error}.

    model_path: a model every node can read (HF folder, .onnx file or deployment folder).
    threads: Numba threads (default: the CPUs Ray assigned to this actor).
    token_column: read token ids (a list of ints per row) from this column instead of texts.
    """

    def __init__(self, model_path: str | os.PathLike, *, text_column: str = "text", id_column: str = "id",
                 token_column: str | None = None, batch_size: int = 32, normalize: bool = True,
                 pooling: str = "mean", layers: Sequence[int] | None = None, threads: int | None = None):
        import numba

        from .api import POOLINGS, load

        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.threads = min(threads or _actor_cpus(), numba.config.NUMBA_NUM_THREADS)
        numba.set_num_threads(self.threads)
        self.model = load(model_path, layers=layers)
        self.text_column, self.id_column, self.token_column = text_column, id_column, token_column
        self.options = dict(batch_size=batch_size, normalize=normalize, pooling=pooling)

    def __call__(self, batch):
        import numba

        from .tables import check_texts, embed_rows

        numba.set_num_threads(self.threads)  # per calling thread in Numba: set where the work runs
        columns = _columns(batch)
        for name in (self.id_column, self.token_column or self.text_column):
            if name not in columns:
                raise InputError(f"Embedder needs a column {name!r}; the batch has {sorted(columns)}")
        ids = list(columns[self.id_column])
        id_type = "string" if ids and isinstance(ids[0], str) else "int64"
        if self.token_column is not None:
            return self._embed_tokens(ids, list(columns[self.token_column]), id_type)
        texts, errors = check_texts(list(columns[self.text_column]), self.text_column)
        return embed_rows(self.model, ids, texts, errors, id_type, **self.options)

    def _embed_tokens(self, ids, rows, id_type):
        from .batching import embed_encodings
        from .tables import make_table

        vocab = self.model.config.vocab_size
        limit = self.model.config.max_position_embeddings
        errors, encodings = [], []
        for row in rows:
            try:
                tokens = np.asarray(row if row is not None else [], dtype=np.int64).reshape(-1)
            except (TypeError, ValueError):
                tokens = np.zeros(0, dtype=np.int64)
            if not 0 < len(tokens) <= limit or tokens.min() < 0 or tokens.max() >= vocab:
                errors.append(f"token ids must be 1 to {limit} ids in [0, {vocab}), got {len(tokens)} ids")
                tokens = np.zeros(1, dtype=np.int64)
            else:
                errors.append(None)
            encodings.append(_Tokens(tokens, np.zeros_like(tokens)))
        opts = self.options
        pad_id = self.model.tokenizer.pad_id if self.model.tokenizer is not None else 0
        emb = embed_encodings(self.model, encodings, opts["batch_size"], opts["pooling"],
                              opts["normalize"], pad_id)
        return make_table(ids, emb, errors, id_type)


@dataclasses.dataclass(frozen=True)
class _Tokens:
    """The two fields of a `tokenizers.Encoding` that batching reads."""
    ids: np.ndarray
    type_ids: np.ndarray


class PieceEmbedder(Embedder):
    """`map_batches` callable for `sparsebert encode --ray`: rows that each describe a `tables.Piece`
    → the embedded rows of those pieces, read by the actor from the input file itself."""

    def __init__(self, model_path, *, text_column: str = "text", id_column: str | None = None,
                 id_type: str = "int64", **options):
        super().__init__(model_path, text_column=text_column, **options)
        self.piece_id_column, self.id_type = id_column, id_type

    def __call__(self, batch):
        import numba
        import pyarrow as pa

        from .tables import embed_rows
        from .tables import Piece, read_piece

        numba.set_num_threads(self.threads)
        columns = _columns(batch)
        tables = []
        for i in range(len(columns["path"])):
            piece = Piece(**{f.name: _scalar(columns[f.name][i]) for f in dataclasses.fields(Piece)})
            ids, texts, errors = read_piece(piece, self.text_column, self.piece_id_column)
            tables.append(embed_rows(self.model, ids, texts, errors, self.id_type, **self.options))
        return pa.concat_tables(tables)


def _scalar(value):
    return value.item() if isinstance(value, np.generic) else value


def local_actor_pids() -> list[int]:
    """PIDs of the Ray Data actor processes (title ray::MapWorker(...)) of the cluster this process
    started with `ray.init()`: its descendants, so other Ray clusters on the machine are left out.
    Linux only (reads /proc); for tests that kill actors and benchmarks that measure their memory."""
    from pathlib import Path

    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    me, pids = os.getpid(), []
    for pid in parent:
        p, depth = parent.get(pid), 0
        while p and p != me and depth < 16:
            p, depth = parent.get(p), depth + 1
        try:
            if p == me and b"MapWorker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            continue
    return pids


def _columns(batch) -> dict:
    """A Ray Data batch (dict of arrays, pyarrow Table or pandas DataFrame) as {name: sequence}."""
    if isinstance(batch, dict):
        return batch
    if hasattr(batch, "column_names"):  # pyarrow.Table
        return {name: batch.column(name).to_pylist() for name in batch.column_names}
    return {name: batch[name].tolist() for name in batch.columns}


def _pool_size(actors: int | None, cpus_per_actor: int) -> int:
    ray = require_ray()
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_actor)
    if isinstance(actors, bool) or not isinstance(actors, int) or actors < 1:
        raise ValueError(f"actors must be a positive integer, got {actors!r}")
    return actors


def encode_dataset(ds, model_path: str | os.PathLike, *, actors: int | None = None, cpus_per_actor: int = 1,
                   rows_per_batch: int = 1024, **options):
    """A Ray Dataset of rows {id, text} (or token ids, see `Embedder`) → a Dataset of rows
    {id, embedding, error}, computed lazily by `actors` actors of `cpus_per_actor` CPUs each.

    With cpus_per_actor=1, Ray fuses a read stage (read_parquet, ...) into the actors; with more,
    reading runs as separate tasks that need CPUs of their own, so leave some free in the cluster."""
    if isinstance(cpus_per_actor, bool) or not isinstance(cpus_per_actor, int) or cpus_per_actor < 1:
        raise ValueError(f"cpus_per_actor must be a positive integer, got {cpus_per_actor!r}")
    pool = require_ray().data.ActorPoolStrategy(size=_pool_size(actors, cpus_per_actor))
    return ds.map_batches(Embedder, fn_constructor_args=(str(model_path),), fn_constructor_kwargs=options,
                          batch_size=rows_per_batch, batch_format="pyarrow", compute=pool,
                          num_cpus=cpus_per_actor)


def embed_pieces(plan, model_path, *, address: str | None = None, actors: int | None = None,
                 cpus_per_actor: int = 1, **options) -> Iterator:
    """The pieces of an input plan → output tables (pyarrow), as they finish, in no fixed order.
    Connects to the cluster at `address` (or starts a local one if Ray is not initialised yet).
    Checks its arguments and that Ray is installed now, not at the first result."""
    ray = require_ray()
    if isinstance(cpus_per_actor, bool) or not isinstance(cpus_per_actor, int) or cpus_per_actor < 1:
        raise ValueError(f"cpus_per_actor must be a positive integer, got {cpus_per_actor!r}")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    if not plan.pieces:
        return iter(())
    ray.data.DataContext.get_current().enable_progress_bars = False  # the driver shows its own
    # One piece per block, so a task is one piece: an actor that dies costs at most one piece of
    # work. No read stage: a read task needs a CPU of its own unless Ray fuses it into the actors,
    # which it does only when they ask for exactly one CPU, and would deadlock a full cluster.
    ds = ray.data.from_items([dataclasses.asdict(p) for p in plan.pieces],
                             override_num_blocks=len(plan.pieces))
    ds = ds.map_batches(
        PieceEmbedder, fn_constructor_args=(str(model_path),),
        fn_constructor_kwargs=dict(text_column=plan.text_column, id_column=plan.id_column,
                                   id_type=plan.id_type, **options),
        batch_size=None, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=_pool_size(actors, cpus_per_actor)), num_cpus=cpus_per_actor)
    return _stream(ray, ds)


def _stream(ray, ds) -> Iterator:
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")
    except ray.exceptions.RayError as exc:
        raise SparseBertError(f"the Ray job failed: {str(exc)[:2000]}") from exc
