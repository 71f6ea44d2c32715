"""Dynamic batching: requests from many clients queue; one model thread runs them in token-budget batches.

A request submits a `Job`: its texts as items, each with a token count. One asyncio task (the
batcher) waits for the first item, then keeps collecting until the queue holds a full batch or
`max_wait_ms` have passed since the later of the oldest item's arrival and the end of the last batch. It takes the oldest items (up to a few batches' worth), sorts
them by length so each batch pads little, and cuts them into batches of at most `max_batch_tokens`
padded tokens (rows x longest row) and `max_batch_size` rows. Each batch runs through `run_batch` on a
single worker thread (the model's own kernels use every core; two batches at once would only fight),
so the event loop keeps accepting requests meanwhile; items that arrive during a run form the next
batch as soon as it ends. A job's future resolves with its results in submission order once all its
items are done.

Same bits as `Model.encode`: the sort (stable, longest first) and the cut into `max_batch_size` rows
are encode's own, so with the default 32 rows a request that is alone in the queue runs in exactly the
batches encode would form, and gets bitwise encode's vectors. Batched with other requests, its rows
share a batch of another shape; the kernels' sums then differ in the last bits (about 1e-7 on MiniLM
embeddings), never more.

Back-pressure: `submit` refuses (`QueueFull`) when the waiting texts would exceed `max_queue`, so
memory stays bounded and the HTTP layer answers 503. A job whose client disconnected is cancelled:
its waiting items leave the queue before they are batched. `stop()` finishes everything accepted
before returning (graceful shutdown); new submissions are refused from then on.

Left out: priorities, per-client fairness beyond FIFO windows, and more than one model thread.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

# How many batches' worth of the oldest waiting items are sorted together: more pads less, fewer
# keeps the order closer to FIFO.
WINDOW_BATCHES = 8


class QueueFull(Exception):
    """The queue cannot take this job now; retry later (HTTP 503 with Retry-After)."""


class ShuttingDown(Exception):
    """The batcher is draining for shutdown and accepts no new work."""


class Job:
    __slots__ = ("future", "results", "remaining", "cancelled", "key", "submitted")

    def __init__(self, n: int, key, loop):
        self.future = loop.create_future()
        self.results: list = [None] * n
        self.remaining = n
        self.cancelled = False
        self.key = key
        self.submitted = time.perf_counter()


class _Item:
    __slots__ = ("job", "index", "length", "payload", "arrived")

    def __init__(self, job, index, length, payload, arrived):
        self.job, self.index, self.length, self.payload, self.arrived = job, index, length, payload, arrived


def plan_batches(lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Indices into `lengths` cut into batches, longest first; each batch's rows x longest length stays
    within `max_batch_tokens` (a single longer row still gets a batch of its own) and its row count
    within `max_batch_size`."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        longest_if = max(longest, lengths[i])
        if current and (len(current) >= max_batch_size or (len(current) + 1) * longest_if > max_batch_tokens):
            batches.append(current)
            current, longest_if = [], lengths[i]
        current.append(i)
        longest = longest_if
    if current:
        batches.append(current)
    return batches


class Batcher:
    """run_batch(key, payloads) -> results (one per payload), called on the worker thread with the
    payloads of one batch; all items of a batch share the job key (e.g. the pipeline options)."""

    def __init__(self, run_batch: Callable[[Any, list], Sequence], *, max_batch_tokens: int,
                 max_batch_size: int, max_wait_ms: float, max_queue: int, metrics=None):
        self.run_batch = run_batch
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self._pending: collections.deque[_Item] = collections.deque()
        self._queued = 0  # waiting items of live jobs, in _pending or in a planned, not-yet-run batch
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._free_since = 0.0  # when the model thread finished its last batch

    @property
    def queue_depth(self) -> int:
        return self._queued

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sparsebert-model")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sparsebert-batcher")

    async def stop(self) -> None:
        """Refuse new jobs, finish every accepted one, then stop the worker thread."""
        self._closing = True
        if self._task is not None:
            self._wake.set()
            await self._task
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def submit(self, lengths: Sequence[int], payloads: Sequence, key=None) -> Job:
        """Queue one job; await `job.future` for its results, in order. Raises QueueFull/ShuttingDown."""
        if self._closing or self._task is None:
            raise ShuttingDown("the server is shutting down")
        n = len(payloads)
        if self._queued + n > self.max_queue:
            raise QueueFull(f"{self._queued} texts are queued; the limit is {self.max_queue}")
        job = Job(n, key, asyncio.get_running_loop())
        now = time.perf_counter()
        for i, (length, payload) in enumerate(zip(lengths, payloads)):
            self._pending.append(_Item(job, i, max(int(length), 1), payload, now))
        self._queued += n
        if n == 0:
            job.future.set_result([])
        self._wake.set()
        return job

    def cancel(self, job: Job) -> None:
        """Drop a job's waiting items (its client went away); items already running finish unused."""
        if job.cancelled or job.future.done():
            return
        job.cancelled = True
        kept = collections.deque(it for it in self._pending if it.job is not job)
        dropped = len(self._pending) - len(kept)
        self._pending = kept
        self._queued -= dropped
        if self.metrics is not None and dropped:
            self.metrics.dropped.inc(amount=dropped)
        job.future.cancel()

    # -- the batcher task ----------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._wait_for_batch()
            for key, batch in self._take_window():
                await self._run_one(loop, key, batch)
            self._free_since = time.perf_counter()

    async def _wait_for_batch(self) -> None:
        """Until the queue holds a full batch, or the oldest item has waited max_wait."""
        while not self._closing:
            pending = self._pending
            if len(pending) >= self.max_batch_size or self._pending_tokens() >= self.max_batch_tokens:
                return
            # From the later of the oldest arrival and the end of the last batch: the clients the last
            # batch answered need a moment to send their next requests, or batches alternate between
            # full and nearly empty under steady load. An item thus waits at most the model's busy
            # time plus max_wait.
            remaining = max(pending[0].arrived, self._free_since) + self.max_wait - time.perf_counter()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _pending_tokens(self) -> int:
        longest = 0
        for k, it in enumerate(self._pending):  # stops early: only a budget's worth matters
            longest = max(longest, it.length)
            if (k + 1) * longest >= self.max_batch_tokens:
                return self.max_batch_tokens
        return len(self._pending) * longest

    def _take_window(self) -> list[tuple[Any, list[_Item]]]:
        """The oldest waiting items (a few batches' worth, one job key), planned into batches."""
        pending = self._pending
        key = pending[0].job.key
        window: list[_Item] = []
        tokens = 0
        skipped: list[_Item] = []
        limit_rows = WINDOW_BATCHES * self.max_batch_size
        limit_tokens = WINDOW_BATCHES * self.max_batch_tokens
        while pending and len(window) < limit_rows and tokens < limit_tokens:
            item = pending.popleft()
            if item.job.key != key:
                skipped.append(item)
                if len(skipped) > limit_rows:
                    break
                continue
            window.append(item)
            tokens += item.length
        pending.extendleft(reversed(skipped))
        plan = plan_batches([it.length for it in window], self.max_batch_tokens, self.max_batch_size)
        return [(key, [window[i] for i in rows]) for rows in plan]

    async def _run_one(self, loop, key, batch: list[_Item]) -> None:
        live = [it for it in batch if not it.job.cancelled]
        self._queued -= len(batch)  # planned items left _pending, so cancel() did not count them
        m = self.metrics
        if m is not None and len(live) < len(batch):
            m.dropped.inc(amount=len(batch) - len(live))
        if not live:
            return
        start = time.perf_counter()
        if m is not None:
            for it in live:
                m.queue_wait.observe(start - it.arrived)
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, key,
                                                 [it.payload for it in live])
        except Exception as exc:  # one bad batch fails its own jobs, never the batcher
            for it in live:
                if not it.job.future.done():
                    it.job.future.set_exception(exc)
            return
        if m is not None:
            m.batch_seconds.observe(time.perf_counter() - start)
            m.batch_size.observe(len(live))
            padded = len(live) * max(it.length for it in live)
            m.batch_tokens.observe(padded)
            m.padded_tokens.inc(amount=padded)
        for it, res in zip(live, results):
            job = it.job
            if job.future.done():
                continue
            job.results[it.index] = res
            job.remaining -= 1
            if job.remaining == 0:
                job.future.set_result(job.results)
