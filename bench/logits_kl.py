"""Benchmark: the chunked vocabulary-parallel distillation KL against the plain full-vocabulary one.

    python bench/logits_kl.py [--vocab 50000] [--tokens 512] [--chunk 256] [--steps 5] [--device cpu]

Both compute T^2 * mean_tokens KL(softmax(t/T) || softmax(s/T)) forward and backward on
student logits [tokens, vocab] (fp32, requires grad) and fixed teacher logits. "chunked" is
`mpu.vocab_parallel_kl_div(..., chunk_size)` at MP=1 (hand-written backward, fp32 temporaries
of chunk x vocab); "plain" is F.kl_div(F.log_softmax(s/T), F.softmax(t/T)) through autograd.
Each variant runs in its own spawned process so its peak memory (peak RSS on CPU, peak
allocated on GPU) is its own; the inputs (2 x tokens x vocab fp32) count in both.
"""
import argparse
import multiprocessing
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from measure import peak_mb, seconds_per_step  # noqa: E402

TEMPERATURE = 15.0


def _inputs(args, device):
    gen = torch.Generator().manual_seed(0)
    s = (torch.randn(args.tokens, args.vocab, generator=gen) * 3).to(device).requires_grad_()
    t = (torch.randn(args.tokens, args.vocab, generator=gen) * 3).to(device)
    return s, t


def _loss_fn(name, args):
    if name == "chunked":
        import mpu
        return lambda s, t: mpu.vocab_parallel_kl_div(s, t, TEMPERATURE, chunk_size=args.chunk).mean() * TEMPERATURE ** 2
    return lambda s, t: F.kl_div(F.log_softmax(s / TEMPERATURE, -1), F.softmax(t / TEMPERATURE, -1),
                                 reduction="none").sum(-1).mean() * TEMPERATURE ** 2


def run(name, args, queue):
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device(args.device)
    s, t = _inputs(args, device)
    loss_fn = _loss_fn(name, args)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = peak_mb(device)

    def step():
        s.grad = None
        loss = loss_fn(s, t)
        loss.backward()
        return loss.detach()

    value = float(step())   # also the warm-up step
    seconds = seconds_per_step(step, args.steps, 0, device)
    queue.put((name, seconds, peak_mb(device), base, value))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=50000)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=256, help="rows per chunk of the vocabulary-parallel KL")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("spawn")
    results = {}
    for name in ("plain", "chunked"):
        queue = context.Queue()
        process = context.Process(target=run, args=(name, args, queue))
        process.start()
        got = queue.get()
        process.join()
        results[got[0]] = got[1:]
    inputs_mb = 2 * args.tokens * args.vocab * 4 / 2 ** 20
    print(f"KL forward+backward: {args.tokens} tokens x vocab {args.vocab}, T={TEMPERATURE:g}, chunk {args.chunk}, "
          f"{args.device}, inputs {inputs_mb:.0f} MB")
    print("| variant | ms/step | peak memory (MB) | peak above start (MB) | loss |\n|---|---|---|---|---|")
    for name in ("plain", "chunked"):
        seconds, peak, base, value = results[name]
        print(f"| {name} | {seconds * 1e3:.1f} | {peak:.0f} | {peak - base:.0f} | {value:.6f} |")
    (p_s, p_peak, p_base, _), (c_s, c_peak, c_base, _) = results["plain"], results["chunked"]
    print(f"| chunked / plain | {c_s / p_s:.2f} | {c_peak / p_peak:.2f} | "
          f"{(c_peak - c_base) / max(p_peak - p_base, 1e-9):.2f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
