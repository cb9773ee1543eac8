"""What the benchmarks measure: peak memory of this process and seconds per step."""
import resource
import time

import torch


def peak_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory on a GPU; peak RSS of this process on the CPU (MB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def seconds_per_step(step, steps: int, warmup: int, device: torch.device) -> float:
    """Run `step` `warmup` times, then time `steps` runs."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps
