"""Small pieces for the engine tests: deterministic blank-infilling batches, a list-backed
resumable data stream, and a loop built around the real Trainer."""
import torch

import mpu
from glm_fixtures import tiny_config
from model import GLMModel
from training.engine import TorchTrainEngine, DistEnv, build_optimizer
from training.metrics_log import MetricsLogger
from training.stages import PretrainStage
from training.trainer import LoopSettings, Trainer


def global_batches(num_steps: int, global_batch: int, seq: int = 12, vocab: int = 136, seed: int = 0):
    """Batches with the same Part-A length in every row (so every data-parallel slice has the
    same number of loss tokens and the mean of slice losses is the global mean)."""
    gen = torch.Generator().manual_seed(seed)
    sep = 7
    batches = []
    for _ in range(num_steps):
        text = torch.randint(1, vocab, (global_batch, seq), generator=gen)
        position = torch.zeros(global_batch, 2, seq, dtype=torch.long)
        position[:, 0, :sep] = torch.arange(sep)
        position[:, 0, sep:] = sep - 1
        position[:, 1, sep:] = torch.arange(1, seq - sep + 1)
        batches.append({"text": text, "position_id": position, "attention_mask": torch.full((global_batch,), sep),
                        "target": torch.randint(0, vocab, (global_batch, seq), generator=gen),
                        "loss_mask": (torch.arange(seq) >= sep).float().expand(global_batch, seq).clone()})
    return batches


class ListBatches:
    """Micro-batches from a list, this rank's slice of each global batch; resumable."""

    def __init__(self, batches, micro_batch: int, slice_index: int = 0, micro_per_step: int = 1):
        self.batches, self.micro_batch, self.slice_index = batches, micro_batch, slice_index
        self.micro_per_step = micro_per_step
        self.position = 0

    def __next__(self):
        step, micro = divmod(self.position, self.micro_per_step)
        begin = (self.slice_index * self.micro_per_step + micro) * self.micro_batch
        self.position += 1
        return {k: v[begin:begin + self.micro_batch] for k, v in self.batches[step].items()}

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


class ConstantLR:
    def __init__(self, lr):
        self.lr = lr

    def step(self):
        pass

    def get_lr(self):
        return self.lr

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def full_state(seed: int = 2024, **overrides):
    torch.manual_seed(seed)
    model = GLMModel(tiny_config(**overrides))
    return {k: v.clone() for k, v in model.state_dict().items()}, mpu.partition_specs(model)


def sharded_model(state, specs, **overrides):
    model = GLMModel(tiny_config(**overrides))
    model.load_state_dict(mpu.shard_state_dict(state, specs, mpu.get_model_parallel_rank(),
                                               mpu.get_model_parallel_world_size()))
    return model


def make_trainer(engine, data, total_iters: int, gas: int = 1, save_dir=None, student=None, combiner=None,
                 teachers=(), lr=1e-3):
    settings = LoopSettings(total_iters=total_iters, gradient_accumulation_steps=gas, log_interval=0,
                            save_dir=save_dir)
    return Trainer(engine=engine, stage=PretrainStage(), data=data, lr_scheduler=ConstantLR(lr), settings=settings,
                   logger=MetricsLogger(None, total_iters, enabled=False), student=student, combiner=combiner,
                   teachers=teachers)


def cpu_env() -> DistEnv:
    import torch.distributed as dist
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return DistEnv(rank, world, 0, torch.device("cpu"), "gloo")


def torch_engine(model, gas: int = 1, lr: float = 1e-3, manual_sync: bool = False):
    optimizer = build_optimizer(model, lr, 0.01, (0.9, 0.999), 1e-8)
    return TorchTrainEngine(model, optimizer, cpu_env(), gas, clip_grad=1.0, manual_sync=manual_sync)
