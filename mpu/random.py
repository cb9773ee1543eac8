"""RNG state tracking and activation checkpointing (Megatron-LM v1 names).

The names say "cuda" for compatibility; the tracker forks the CPU generator and, when a
GPU is present, the current CUDA generator too, so dropout is reproducible on either.

Dropout on tensors that are *replicated* across model-parallel ranks uses the default
generator (seeded identically on every rank); dropout on *partitioned* tensors (attention
probabilities of this rank's heads) runs inside `get_cuda_rng_tracker().fork()`, which
uses a per-model-parallel-rank seed.
"""
import contextlib
from typing import Any, Callable, Dict

import torch

from .initialize import get_model_parallel_rank

_MODEL_PARALLEL_RNG_TRACKER_NAME = "model-parallel-rng"

DeviceRNGState = Dict[str, torch.Tensor]


def _get_device_rng_state() -> DeviceRNGState:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_device_rng_state(state: DeviceRNGState) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


class CudaRNGStatesTracker:
    """Named RNG states that a `fork()` swaps in for the duration of a block."""

    def __init__(self):
        self.states_: Dict[str, DeviceRNGState] = {}
        self.seeds_: set = set()

    def reset(self) -> None:
        self.states_ = {}
        self.seeds_ = set()

    def get_states(self) -> Dict[str, DeviceRNGState]:
        """A copy of the tracked states (safe to keep across later forks)."""
        return {name: {dev: s.clone() for dev, s in state.items()} for name, state in self.states_.items()}

    def set_states(self, states: Dict[str, DeviceRNGState]) -> None:
        self.states_ = {name: {dev: s.clone() for dev, s in state.items()} for name, state in states.items()}

    def add(self, name: str, seed: int) -> None:
        if seed in self.seeds_:
            raise ValueError(f"seed {seed} already exists in the RNG tracker")
        if name in self.states_:
            raise ValueError(f"RNG state {name!r} already exists in the RNG tracker")
        self.seeds_.add(seed)
        original = _get_device_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = _get_device_rng_state()
        _set_device_rng_state(original)

    @contextlib.contextmanager
    def fork(self, name: str = _MODEL_PARALLEL_RNG_TRACKER_NAME):
        if name not in self.states_:
            raise KeyError(f"RNG state {name!r} is not tracked (known: {sorted(self.states_)}); "
                           f"call model_parallel_cuda_manual_seed(seed) first")
        original = _get_device_rng_state()
        _set_device_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = _get_device_rng_state()
            _set_device_rng_state(original)


# One tracker per process, as in Megatron (its API hands out this object).
_RNG_STATE_TRACKER = CudaRNGStatesTracker()


def get_cuda_rng_tracker() -> CudaRNGStatesTracker:
    return _RNG_STATE_TRACKER


def model_parallel_cuda_manual_seed(seed: int) -> None:
    """Seed the default generators with `seed` (same on all ranks) and the tracker's
    model-parallel state with `seed + 2718 + model_parallel_rank` (different per MP rank)."""
    torch.manual_seed(seed)
    tracker = get_cuda_rng_tracker()
    tracker.reset()
    tracker.add(_MODEL_PARALLEL_RNG_TRACKER_NAME, seed + 2718 + get_model_parallel_rank())


def _autocast_state() -> Dict[str, Any]:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {dev: (torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)) for dev in devices}


class CheckpointFunction(torch.autograd.Function):
    """Run `run_function` without keeping activations; recompute it in backward with the
    forward's CPU/CUDA generator states, tracker states and autocast settings restored."""

    @staticmethod
    def forward(ctx, run_function, *args):
        ctx.run_function = run_function
        ctx.tensor_positions = [i for i, a in enumerate(args) if torch.is_tensor(a)]
        ctx.other_args = [None if torch.is_tensor(a) else a for a in args]
        ctx.save_for_backward(*(args[i] for i in ctx.tensor_positions))
        ctx.device_rng_state = _get_device_rng_state()
        ctx.tracker_states = get_cuda_rng_tracker().get_states()
        ctx.autocast = _autocast_state()
        with torch.no_grad():
            return run_function(*args)

    @staticmethod
    def backward(ctx, *grad_outputs):
        args = list(ctx.other_args)
        for position, saved in zip(ctx.tensor_positions, ctx.saved_tensors):
            args[position] = saved.detach().requires_grad_(saved.requires_grad)
        tracker = get_cuda_rng_tracker()
        backward_rng_state, backward_tracker_states = _get_device_rng_state(), tracker.get_states()
        _set_device_rng_state(ctx.device_rng_state)
        tracker.set_states(ctx.tracker_states)
        try:
            with torch.enable_grad(), contextlib.ExitStack() as stack:
                for device, (enabled, dtype) in ctx.autocast.items():
                    stack.enter_context(torch.autocast(device, dtype=dtype, enabled=enabled))
                outputs = ctx.run_function(*args)
        finally:
            _set_device_rng_state(backward_rng_state)
            tracker.set_states(backward_tracker_states)
        outputs = (outputs,) if torch.is_tensor(outputs) else outputs
        pairs = [(out, grad) for out, grad in zip(outputs, grad_outputs)
                 if torch.is_tensor(out) and out.requires_grad and grad is not None]
        if pairs:
            torch.autograd.backward([out for out, _ in pairs], [grad for _, grad in pairs])
        input_grads = tuple(a.grad if torch.is_tensor(a) else None for a in args)
        return (None,) + input_grads


def checkpoint(function: Callable, *args):
    """Activation checkpointing: `function(*args)` is recomputed during backward.

    `function` must return a tensor or a tuple of tensors and must be deterministic given
    the RNG states (which are restored for the recomputation).
    """
    return CheckpointFunction.apply(function, *args)
