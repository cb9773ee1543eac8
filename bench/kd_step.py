"""Benchmark: one KD training step of this engine against plain PyTorch, same sizes, same run.

    python bench/kd_step.py [--models glm|hf] [--steps 20] [--batch 8] [--seq 128] [--vocab 8192] [--device cpu]

Both sides do the same work per step: a teacher forward without gradients, a student forward
and backward, and an AdamW step, on a loss of T^2 * KL(teacher || student) over every token plus
the token cross-entropy. "glmkd" is this project's path (GLMModel on mpu layers, the KD student
wrapper and AvgTeacher, the trainer's micro-step on the torch engine); "plain" is a pre-LN
transformer written with torch.nn (nn.TransformerEncoderLayer, tied output) and F.kl_div.
With `--models hf` both sides use the same Hugging Face Llama models (grouped-query attention,
random weights) on the causal-LM objective: "glmkd" wraps them in `model.hf.HFTapModel` and
runs the trainer's micro-step with `HFLanguageModelStage`; "plain" calls the HF models directly.
Each variant runs in its own process so its peak memory (peak RSS on CPU, peak allocated on
GPU) is its own. Prints both and their ratio.
"""
import argparse
import multiprocessing
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from measure import peak_mb, seconds_per_step  # noqa: E402


class PlainGLM(nn.Module):
    """Pre-LN transformer LM with 2-D positions and a tied output, in plain torch.nn."""

    def __init__(self, vocab, layers, hidden, heads, max_positions):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.positions = nn.Embedding(max_positions + 1, hidden)
        self.block_positions = nn.Embedding(max_positions + 1, hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(hidden)

    def forward(self, ids, position, mask):
        h = self.embed(ids) + self.positions(position[:, 0]) + self.block_positions(position[:, 1])
        h = self.final_norm(self.layers(h, mask=mask))
        return h @ self.embed.weight.T


def _batch(args, device):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, args.vocab, (args.batch, args.seq), generator=gen)
    sep = args.seq // 2
    position = torch.zeros(args.batch, 2, args.seq, dtype=torch.long)
    position[:, 0, :sep] = torch.arange(sep)
    position[:, 0, sep:] = sep - 1
    position[:, 1, sep:] = torch.arange(1, args.seq - sep + 1)
    loss_mask = (torch.arange(args.seq) >= sep).float().expand(args.batch, -1).clone()
    batch = {"text": ids, "position_id": position, "attention_mask": torch.full((args.batch,), sep),
             "target": torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen), "loss_mask": loss_mask}
    return {k: v.to(device) for k, v in batch.items()}


def run_glmkd(args, queue):
    from distill.distill_model import DistillOptions, TeacherInfo, build_student
    from distill.multi_teacher_model import AvgTeacherOptions, build_multi_teacher
    from model import GLMConfig, GLMModel
    from training.engine import DistEnv, TorchTrainEngine, build_optimizer
    from training.metrics_log import MetricsLogger
    from training.stages import PretrainStage
    from training.teachers import Teacher
    from training.trainer import LoopSettings, Trainer
    from training.config import TeacherConfig, ArchConfig
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = lambda layers, hidden, heads: GLMConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                                                     vocab_size=args.vocab, max_sequence_length=args.seq,
                                                     embedding_dropout_prob=0.0, attention_dropout_prob=0.0,
                                                     output_dropout_prob=0.0)
    teacher_glm = GLMModel(config(args.teacher_layers, args.teacher_hidden, args.heads)).to(device).eval()
    for p in teacher_glm.parameters():
        p.requires_grad_(False)
    options = DistillOptions(distill_pt_soft=True, distill_pt_hard=True, distill_temperature=2.0)
    student = build_student("kd", GLMModel(config(args.student_layers, args.student_hidden, args.heads)), options,
                            [TeacherInfo(args.teacher_layers, args.teacher_hidden, args.heads)])
    env = DistEnv(0, 1, 0, device, "gloo")
    engine = TorchTrainEngine(student, build_optimizer(student, 1e-4, 0.01, (0.9, 0.999), 1e-8), env, 1, 1.0)
    teacher = Teacher(teacher_glm, TeacherConfig(ArchConfig(), None), torch.float32)

    class Data:
        batch = _batch(args, device)

        def __next__(self):
            return self.batch

    class Schedule:
        step = lambda self: None
        get_lr = lambda self: 1e-4

    trainer = Trainer(engine=engine, stage=PretrainStage(), data=Data(), lr_scheduler=Schedule(),
                      settings=LoopSettings(total_iters=10 ** 9, gradient_accumulation_steps=1, log_interval=0,
                                            save_dir=None),
                      logger=MetricsLogger(None, 0, enabled=False), student=student,
                      combiner=build_multi_teacher(None, AvgTeacherOptions(), options), teachers=[teacher])
    steps_per_second = 1.0 / seconds_per_step(lambda: trainer.micro_step(Data.batch), args.steps, args.warmup, device)
    queue.put(("glmkd", steps_per_second, peak_mb(device)))


def _llama(args, layers, hidden):
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(vocab_size=args.vocab, hidden_size=hidden, num_hidden_layers=layers,
                                        num_attention_heads=args.heads, num_key_value_heads=args.heads // 2,
                                        intermediate_size=4 * hidden, max_position_embeddings=args.seq))


def _lm_batch(args, device):
    gen = torch.Generator().manual_seed(0)
    text = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen)
    target = torch.cat([text[:, 1:], text[:, :1]], dim=1)                        # the next token
    loss_mask = torch.ones(args.batch, args.seq)
    loss_mask[:, -1] = 0.0
    batch = {"text": text, "attention_mask": torch.ones_like(text), "target": target, "loss_mask": loss_mask}
    return {k: v.to(device) for k, v in batch.items()}


def run_hf_glmkd(args, queue):
    from distill.distill_model import DistillOptions, TeacherInfo, build_student
    from distill.multi_teacher_model import AvgTeacherOptions, build_multi_teacher
    from model.hf import HFTapModel
    from training.config import ArchConfig, TeacherConfig
    from training.engine import DistEnv, TorchTrainEngine, build_optimizer
    from training.metrics_log import MetricsLogger
    from training.stages import HFLanguageModelStage
    from training.teachers import Teacher
    from training.trainer import LoopSettings, Trainer
    device = torch.device(args.device)
    torch.manual_seed(0)
    teacher_model = HFTapModel(_llama(args, args.teacher_layers, args.teacher_hidden)).to(device).eval()
    for p in teacher_model.parameters():
        p.requires_grad_(False)
    options = DistillOptions(distill_pt_soft=True, distill_pt_hard=True, distill_temperature=2.0)
    student = build_student("kd", HFTapModel(_llama(args, args.student_layers, args.student_hidden)).to(device),
                            options, [TeacherInfo(args.teacher_layers, args.teacher_hidden, args.heads)])
    env = DistEnv(0, 1, 0, device, "gloo")
    engine = TorchTrainEngine(student, build_optimizer(student, 1e-4, 0.01, (0.9, 0.999), 1e-8), env, 1, 1.0)
    teacher = Teacher(teacher_model, TeacherConfig(ArchConfig(), None), torch.float32)
    batch = _lm_batch(args, device)

    class Data:
        def __next__(self):
            return batch

    class Schedule:
        step = lambda self: None
        get_lr = lambda self: 1e-4

    trainer = Trainer(engine=engine, stage=HFLanguageModelStage(), data=Data(), lr_scheduler=Schedule(),
                      settings=LoopSettings(total_iters=10 ** 9, gradient_accumulation_steps=1, log_interval=0,
                                            save_dir=None),
                      logger=MetricsLogger(None, 0, enabled=False), student=student,
                      combiner=build_multi_teacher(None, AvgTeacherOptions(), options), teachers=[teacher])
    steps_per_second = 1.0 / seconds_per_step(lambda: trainer.micro_step(batch), args.steps, args.warmup, device)
    queue.put(("glmkd", steps_per_second, peak_mb(device)))


def run_hf_plain(args, queue):
    device = torch.device(args.device)
    torch.manual_seed(0)
    teacher = _llama(args, args.teacher_layers, args.teacher_hidden).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = _llama(args, args.student_layers, args.student_hidden).to(device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    batch = _lm_batch(args, device)
    temperature = 2.0

    def step():
        with torch.no_grad():
            t_logits = teacher(input_ids=batch["text"], attention_mask=batch["attention_mask"], use_cache=False).logits
        s_logits = student(input_ids=batch["text"], attention_mask=batch["attention_mask"], use_cache=False).logits
        ce = F.cross_entropy(s_logits.flatten(0, 1), batch["target"].flatten(), reduction="none")
        hard = (ce * batch["loss_mask"].flatten()).sum() / batch["loss_mask"].sum()
        kl = F.kl_div(F.log_softmax(s_logits / temperature, -1), F.log_softmax(t_logits / temperature, -1),
                      log_target=True, reduction="none").sum(-1)
        loss = temperature ** 2 * (kl * batch["loss_mask"]).mean() + hard
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    queue.put(("plain", 1.0 / seconds_per_step(step, args.steps, args.warmup, device), peak_mb(device)))


def run_plain(args, queue):
    device = torch.device(args.device)
    torch.manual_seed(0)
    teacher = PlainGLM(args.vocab, args.teacher_layers, args.teacher_hidden, args.heads, args.seq).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = PlainGLM(args.vocab, args.student_layers, args.student_hidden, args.heads, args.seq).to(device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    batch = _batch(args, device)
    sep = args.seq // 2
    i = torch.arange(args.seq, device=device)
    allowed = (i[:, None] >= i[None, :]) | (i[None, :] < sep)
    mask = torch.zeros(args.seq, args.seq, device=device).masked_fill(~allowed, float("-inf"))
    temperature = 2.0

    def step():
        with torch.no_grad():
            t_logits = teacher(batch["text"], batch["position_id"], mask)
        s_logits = student(batch["text"], batch["position_id"], mask)
        ce = F.cross_entropy(s_logits.flatten(0, 1), batch["target"].flatten(), reduction="none")
        hard = (ce * batch["loss_mask"].flatten()).sum() / batch["loss_mask"].sum()
        kl = F.kl_div(F.log_softmax(s_logits / temperature, -1), F.log_softmax(t_logits / temperature, -1),
                      log_target=True, reduction="none").sum(-1)
        loss = temperature ** 2 * (kl * batch["loss_mask"]).mean() + hard
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    queue.put(("plain", 1.0 / seconds_per_step(step, args.steps, args.warmup, device), peak_mb(device)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", choices=("glm", "hf"), default="glm",
                        help="GLM models (this project's) or Hugging Face Llama models on both sides")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--teacher-layers", type=int, default=6)
    parser.add_argument("--teacher-hidden", type=int, default=512)
    parser.add_argument("--student-layers", type=int, default=3)
    parser.add_argument("--student-hidden", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("spawn")
    results = {}
    for target in ((run_plain, run_glmkd) if args.models == "glm" else (run_hf_plain, run_hf_glmkd)):
        queue = context.Queue()
        process = context.Process(target=target, args=(args, queue))
        process.start()
        name, speed, peak = queue.get()
        process.join()
        results[name] = (speed, peak)
    tokens = args.batch * args.seq
    print(f"KD step ({args.models} models): batch {args.batch} x seq {args.seq}, vocab {args.vocab}, "
          f"teacher {args.teacher_layers}x"
          f"{args.teacher_hidden}, student {args.student_layers}x{args.student_hidden}, {args.device}, "
          f"{torch.get_num_threads()} threads")
    print("| variant | steps/s | tokens/s | peak memory (MB) |\n|---|---|---|---|")
    for name in ("plain", "glmkd"):
        speed, peak = results[name]
        print(f"| {name} | {speed:.2f} | {speed * tokens:.0f} | {peak:.0f} |")
    (plain_speed, plain_peak), (ours_speed, ours_peak) = results["plain"], results["glmkd"]
    print(f"| glmkd / plain | {ours_speed / plain_speed:.2f} | {ours_speed / plain_speed:.2f} | "
          f"{ours_peak / plain_peak:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
