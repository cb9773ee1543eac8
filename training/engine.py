"""Distributed setup and the training engine: DeepSpeed ZeRO, or torch DDP, behind one API.

`deepspeed.initialize` is called in one place (`DeepSpeedTrainEngine`), DeepSpeed is
imported lazily, and both engines take the same torch AdamW built from the run's resolved
optimizer values, so a DeepSpeed run and a plain run follow the same update rule.

The trainer uses an engine like this, once per micro-batch:

    with engine.micro_step():          # gradient sync only on the accumulation boundary
        output = engine(*inputs, taps=..., interventions=...)
        engine.backward(loss)          # scaled by 1 / gradient_accumulation_steps
    stepped = engine.step()            # True when the optimizer stepped
"""
import contextlib
import os
import random
import socket
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.distributed as dist

import mpu
from mpu.data import collective_device

from .launcher_watch import exit_with_launcher


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed(backend_flag: str, use_deepspeed: bool, model_parallel_size: int) -> DistEnv:
    """Join the process group the launcher described (deepspeed, torchrun) or start a group of
    one, then build the model-parallel groups. nccl on GPUs; gloo on CPUs (with a note when the
    command line asked for nccl)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size == 1 and use_deepspeed:   # DeepSpeed needs a process group even for one process
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), backend_flag
    else:
        device, backend = torch.device("cpu"), "gloo"
        if backend_flag != "gloo" and rank == 0:
            print(f"note: --distributed-backend={backend_flag} needs GPUs; using gloo on this CPU machine")
    if model_parallel_size < 1 or world_size % model_parallel_size != 0 or (world_size == 1 and model_parallel_size > 1):
        raise ValueError(f"--model-parallel-size={model_parallel_size} does not divide the world size {world_size}")
    exit_with_launcher()   # a worker of torchrun/deepspeed stops when its launcher is killed
    if world_size == 1 and not use_deepspeed:
        return DistEnv(rank, world_size, local_rank, device, backend)   # one process: no group needed
    if not dist.is_initialized():
        if use_deepspeed:
            import deepspeed
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
        else:
            dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    if not mpu.model_parallel_is_initialized():
        mpu.initialize_model_parallel(model_parallel_size)
    return DistEnv(rank, world_size, local_rank, device, backend)


def shutdown_distributed() -> None:
    mpu.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def set_random_seed(seed: int) -> None:
    """Python, NumPy and torch generators, and the model-parallel RNG tracker."""
    random.seed(seed)
    np.random.seed(seed)
    mpu.model_parallel_cuda_manual_seed(seed)


def rng_state() -> Dict[str, Any]:
    """Every generator's state, in a form `torch.load(weights_only=True)` accepts."""
    numpy_state = np.random.get_state()
    state = {"python": list(random.getstate()[1]) + [random.getstate()[2]],
             "numpy": {"keys": torch.from_numpy(numpy_state[1].astype(np.int64)), "pos": int(numpy_state[2]),
                       "has_gauss": int(numpy_state[3]), "gauss": float(numpy_state[4])},
             "torch": torch.get_rng_state(), "tracker": mpu.get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((3, tuple(python[:-1]), python[-1]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    mpu.get_cuda_rng_tracker().set_states(state["tracker"])


def param_groups(module: torch.nn.Module, weight_decay: float):
    """Weight decay on weights; none on biases and norm parameters (GLM's grouping, extended
    to every 1-D parameter so that HF models' RMSNorm gains are not decayed). A parameter
    owned by two modules (tied embeddings) is listed once."""
    decay, no_decay, seen = [], [], set()
    for submodule in module.modules():
        is_norm = isinstance(submodule, torch.nn.LayerNorm)
        for name, param in submodule.named_parameters(recurse=False):
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                (no_decay if is_norm or name == "bias" or param.dim() == 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(module: torch.nn.Module, lr: float, weight_decay: float, betas, eps: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(module, weight_decay), lr=lr, betas=tuple(betas), eps=eps)


def _broadcast_from_first_data_parallel_rank(tensors) -> None:
    group = mpu.get_data_parallel_group()
    source = dist.get_global_rank(group, 0)
    for tensor in tensors:
        dist.broadcast(tensor.data, src=source, group=group)


def _average_gradients(params) -> None:
    """Average .grad over the data-parallel group, one flat all-reduce per dtype (every rank
    walks the same parameter list; a gradient missing here but present on another rank is
    zeros, one missing on every rank stays None)."""
    group, world_size = mpu.get_data_parallel_group(), mpu.get_data_parallel_world_size()
    present = torch.tensor([param.grad is not None for param in params], dtype=torch.uint8,
                           device=collective_device(group))
    dist.all_reduce(present, op=dist.ReduceOp.MAX, group=group)   # used on some rank: zeros elsewhere
    synced = [param for param, used in zip(params, present.tolist()) if used]
    for param in synced:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    by_dtype: Dict[torch.dtype, list] = {}
    for param in synced:
        by_dtype.setdefault(param.grad.dtype, []).append(param.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=group)
        flat /= world_size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()


class TorchTrainEngine:
    """Single process or data parallel over the data-parallel group, with optional autocast.

    Data parallelism is torch DDP, or with `manual_sync` (distillation students, whose
    auxiliary layers run in the loss outside `forward`, which DDP's reducer does not allow)
    parameters broadcast from the group's first rank once and gradients averaged over the
    group at each accumulation boundary (missing gradients count as zeros)."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv,
                 gradient_accumulation_steps: int, clip_grad: float, precision: str = "fp32",
                 find_unused_parameters: bool = False, manual_sync: bool = False):
        self.module = module.to(env.device)
        self.optimizer = optimizer
        self.env = env
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.clip_grad = clip_grad
        self.precision = precision
        self.micro_steps = 0
        self.global_grad_norm: Optional[float] = None
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.manual_sync = manual_sync and mpu.get_data_parallel_world_size() > 1
        if self.manual_sync:
            self.model = self.module
            _broadcast_from_first_data_parallel_rank(list(self.module.parameters()) + list(self.module.buffers()))
        elif mpu.get_data_parallel_world_size() > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.module, process_group=mpu.get_data_parallel_group(),
                device_ids=[env.local_rank] if env.device.type == "cuda" else None,
                find_unused_parameters=find_unused_parameters)
        else:
            self.model = self.module

    def is_gradient_accumulation_boundary(self) -> bool:
        return (self.micro_steps + 1) % self.gradient_accumulation_steps == 0

    @contextlib.contextmanager
    def micro_step(self):
        sync = isinstance(self.model, torch.nn.parallel.DistributedDataParallel) and \
            not self.is_gradient_accumulation_boundary()
        with (self.model.no_sync() if sync else contextlib.nullcontext()):
            yield

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.env.device.type, dtype=dtype)

    def __call__(self, *inputs, **kwargs):
        with self.autocast():
            return self.model(*inputs, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        loss = loss / self.gradient_accumulation_steps
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self) -> bool:
        boundary = self.is_gradient_accumulation_boundary()
        self.micro_steps += 1
        if not boundary:
            return False
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if self.manual_sync:
            _average_gradients(params)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        self.global_grad_norm = mpu.clip_grad_norm(params, self.clip_grad) if self.clip_grad > 0 else None
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()

    def state_dict(self) -> Dict[str, Any]:
        state = {"optimizer": self.optimizer.state_dict(), "micro_steps": self.micro_steps}
        if self.scaler:
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any], load_optimizer: bool = True) -> None:
        if load_optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scaler and "grad_scaler" in state:
                self.scaler.load_state_dict(state["grad_scaler"])
        self.micro_steps = state.get("micro_steps", 0)


class DeepSpeedTrainEngine:
    """A DeepSpeed engine (ZeRO 0-3, offload, fp16/bf16 from the config) with the same API."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, ds_config: Dict[str, Any],
                 env: DistEnv):
        import deepspeed
        ds_config = {k: v for k, v in ds_config.items() if k not in ("optimizer", "scheduler")}
        ds_config.setdefault("zero_allow_untested_optimizer", True)
        if ds_config.get("zero_optimization", {}).get("offload_optimizer"):
            ds_config.setdefault("zero_force_ds_cpu_optimizer", False)
        if ds_config.get("zero_optimization", {}).get("stage", 0) == 3:
            _register_tied_weights(module)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.engine, self.optimizer, _, _ = deepspeed.initialize(
                model=module, optimizer=optimizer, config=ds_config, mpu=mpu, dist_init_required=False)
        _load_without_code(self.engine)
        self.module = self.engine.module
        self.env = env
        self.gradient_accumulation_steps = self.engine.gradient_accumulation_steps()
        self.precision = "bf16" if ds_config.get("bf16", {}).get("enabled") else (
            "fp16" if ds_config.get("fp16", {}).get("enabled") else "fp32")

    def is_gradient_accumulation_boundary(self) -> bool:
        return self.engine.is_gradient_accumulation_boundary()

    @contextlib.contextmanager
    def micro_step(self):
        yield

    def autocast(self):
        return contextlib.nullcontext()   # DeepSpeed casts the module itself

    def __call__(self, *inputs, **kwargs):
        return self.engine(*inputs, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> bool:
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        return boundary and self.engine.was_step_applied()

    @property
    def global_grad_norm(self) -> Optional[float]:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else None

    def zero_grad(self) -> None:
        self.engine.zero_grad()

    def train(self) -> None:
        self.engine.train()

    def eval(self) -> None:
        self.engine.eval()


def deepspeed_state_types() -> tuple:
    """The plain data classes DeepSpeed pickles into its optimizer states (no custom unpickling
    code): the only types besides tensors and containers a resumed DeepSpeed checkpoint may hold."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address


def _load_without_code(engine) -> None:
    """DeepSpeed reads its checkpoints with torch.load(weights_only=False), which runs whatever
    a crafted file asks; route every read of this engine through the project's reader instead
    (checksums, weights_only=True, `deepspeed_state_types` allowed)."""
    from model.checkpoint import load_file
    safe_types = deepspeed_state_types()
    engine.checkpoint_engine.load = lambda path, map_location=None: load_file(path, safe_types=safe_types)


def _register_tied_weights(module: torch.nn.Module) -> None:
    """ZeRO-3 gathers a parameter only inside its own module's forward; GLM also uses the word
    embedding weight in its output layer, so it is registered as an external parameter there."""
    import deepspeed
    from model import GLMModel
    for submodule in module.modules():
        if isinstance(submodule, GLMModel):
            deepspeed.zero.register_external_parameter(submodule, submodule.word_embeddings.weight)
