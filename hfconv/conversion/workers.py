"""Running the shard tasks: on this thread with a verifying helper, or in worker processes."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from .results import ProgressCallback
from .verify import check_batch, finish_shard
from .write import Batch, ShardOutcome, ShardTask, Sources, Writeback, write_shard

__all__ = ["convert_shards", "progress_counter", "run_tasks"]


_COPY_CHUNK = 64 << 20
"""Bytes a worker copies between two progress reports (copy_range's chunk)."""


def convert_shards(tasks: Sequence[ShardTask], progress: Callable[[int], None]) -> list[ShardOutcome]:
    """Write the shards in order on this thread; verify behind the writer on a helper thread.

    The helper gets each ~64 MiB batch of tensors as soon as it is written (so the bytes
    are compared while still hot in the page cache, and while the next ones are copied:
    copies, comparisons and fsync all release the GIL), then each shard's header, then
    fsyncs it.
    """
    checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hfconv-verify")
    sources = Sources(tasks[0].roots if tasks else ())  # used on the checker thread only
    try:
        finals = []
        # Early writeback only helps a final fsync; without --fsync the kernel writes back later.
        durable = any(task.durable for task in tasks)
        with Writeback() if durable else contextlib.nullcontext() as writeback:
            for task in tasks:
                checks: list[Future] = []

                def hand_over(batch: Batch, task: ShardTask = task, checks: list[Future] = checks) -> None:
                    checks.append(checker.submit(check_batch, task, batch, sources, progress))

                write_shard(task, progress, writeback.request if writeback is not None else None,
                             hand_over if (task.verify or task.digest) else None)
                finals.append(checker.submit(finish_shard, task, checks))
        return [future.result() for future in finals]
    finally:
        checker.shutdown(wait=True, cancel_futures=True)
        sources.close()


_worker_queue = None


def _init_worker(queue: Any) -> None:
    """Worker processes ignore Ctrl-C: the parent stops them and cleans up."""
    import signal

    global _worker_queue
    _worker_queue = queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_in_worker(task: ShardTask) -> ShardOutcome:
    pending = [0]

    def report(n: int) -> None:
        pending[0] += n
        if pending[0] >= _COPY_CHUNK and _worker_queue is not None:
            _worker_queue.put((task.shard.name, pending[0]))
            pending[0] = 0

    # The parent settles each shard's remaining count when its result arrives (queue messages
    # may arrive later than the result), so nothing is sent after the last chunk.
    return convert_shards([task], report)[0]


def _shard_progress_total(task: ShardTask) -> int:
    return task.shard.data_nbytes * (2 if task.verify else 1)


def run_tasks(tasks: list[ShardTask], jobs: int, progress: Callable[[int], None]) -> list[ShardOutcome]:
    """Write (and verify) the shards, in this process or in ``jobs`` worker processes."""
    if jobs <= 1 or len(tasks) <= 1:
        return convert_shards(tasks, progress)

    import multiprocessing
    import queue as queue_module
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    updates = context.Queue()
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=context,
                               initializer=_init_worker, initargs=(updates,))
    results: dict[str, ShardOutcome] = {}
    counted: dict[str, int] = {task.shard.name: 0 for task in tasks}

    def drain() -> None:
        while True:
            try:
                name, n = updates.get_nowait()
            except queue_module.Empty:
                return
            if name not in results:  # late messages of a settled shard are ignored
                counted[name] += n
                progress(n)

    try:
        futures = {pool.submit(_run_in_worker, task): task for task in tasks}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            drain()
            for future in done:
                outcome = future.result()
                results[outcome.name] = outcome
                progress(_shard_progress_total(futures[future]) - counted[outcome.name])
        pool.shutdown(wait=True)
    except BaseException:
        _stop_pool(pool)
        raise
    return [results[task.shard.name] for task in tasks]


def _stop_pool(pool: Any) -> None:
    """Stop workers now (they may be mid-shard) and wait until none can write any more."""
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)


def progress_counter(progress: ProgressCallback | None, total: int, passes: int) -> Callable[[int], None]:
    """The per-chunk callback of the writers: each byte is written and (with verify) compared,
    so ``progress`` sees each counted half when written and half when verified, and 100%
    means both are done. Calls ``progress(0, total)`` at once."""
    done = [0]
    lock = threading.Lock()

    def advance(n: int) -> None:
        if progress is not None:
            with lock:
                done[0] += n
                progress(done[0] // passes, total)

    if progress is not None:
        progress(0, total)
    return advance
