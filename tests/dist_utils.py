"""Run a test function in several gloo processes on the CPU.

`run_distributed(worker, world_size, *args)` spawns `world_size` processes, initialises
torch.distributed (gloo, file rendezvous in a fresh temp dir, so parallel test runs never
collide on a port) and the model-parallel groups, calls `worker(rank, world_size, *args)`,
and returns the workers' return values in rank order. An exception in any worker fails
the calling test with the worker's traceback. `worker` must be a module-level function.
"""
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as multiprocessing

import mpu


def _entry(rank, worker, world_size, model_parallel_size, workdir, args):
    os.environ.update(OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{workdir}/rendezvous", rank=rank, world_size=world_size)
    try:
        mpu.initialize_model_parallel(model_parallel_size or world_size)
        result = worker(rank, world_size, *args)
        torch.save(result, Path(workdir) / f"result_{rank}.pt")
    finally:
        mpu.destroy_model_parallel()
        dist.destroy_process_group()


def run_distributed(worker, world_size: int, *args, model_parallel_size: int = None):
    with tempfile.TemporaryDirectory() as workdir:
        multiprocessing.start_processes(_entry, args=(worker, world_size, model_parallel_size, workdir, args),
                                        nprocs=world_size, start_method="spawn")
        return [torch.load(Path(workdir) / f"result_{rank}.pt", weights_only=False) for rank in range(world_size)]


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str = "") -> None:
    """max|actual - expected| <= rtol * max|expected| (a max-norm relative error)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().item()
    error = (actual - expected).abs().max().item()
    assert error <= rtol * max(scale, 1e-30), f"{what}: max error {error:.3g} > {rtol:g} * max|expected| {scale:.3g}"
