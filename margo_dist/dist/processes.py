"""Run one function in N gloo processes on loopback and collect what each returns.

The multi-process base of the contract tests and of ``benchmarks/bench_dist.py`` (no Ray: the
step itself, measured and compared): each process joins a fresh
``torch.distributed`` group (gloo, 127.0.0.1, a free port), runs ``fn(rank, world,
*args)`` with ``threads`` torch threads, and sends back its result or its traceback. Every
process is joined or killed before the call returns, also when one fails or hangs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue as queue_mod
import socket
import traceback
from datetime import timedelta
from typing import Any, Callable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn: Callable[..., Any], payload: bytes, out: "mp.Queue",
           threads: int) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
        # plain pickle: a queue would send tensors as shared memory that dies with this process
        out.put((rank, True, pickle.dumps(fn(rank, world, *pickle.loads(payload)))))
    except BaseException:  # noqa: BLE001 - the parent re-raises it with the rank named
        out.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_workers(fn: Callable[..., Any], world: int, *args: Any, timeout: float = 180.0, threads: int = 1) -> list[Any]:
    """``[fn(0, world, *args), ..., fn(world - 1, world, *args)]``, each in its own process
    with ``threads`` torch threads; ``fn`` must be importable (a module-level function)."""
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    port = free_port()
    # plain pickle both ways: multiprocessing would hand every process the same shared-memory
    # tensors, so workers that update them in place (an optimiser state) would share updates
    payload = pickle.dumps(args)
    # not daemonic: a worker may start processes of its own (sampled mode's DataLoader
    # workers); every one is joined or killed below all the same
    procs = [ctx.Process(target=_entry, args=(r, world, port, fn, payload, out, threads))
             for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    try:
        for _ in range(world):
            try:
                rank, ok, value = out.get(timeout=timeout)
            except queue_mod.Empty:
                raise TimeoutError(f"{world - len(results)} of {world} workers sent nothing in {timeout:.0f}s")
            if not ok:
                raise RuntimeError(f"worker {rank} failed:\n{value}")
            results[rank] = pickle.loads(value)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    return [results[r] for r in range(world)]
