"""The README demo: train a small teacher, distil a smaller student from it, train the same
student without the teacher, and compare them on held-out text.

    python examples/kd_demo.py [--quick] [--output runs/demo]

Everything is generated here: a toy language whose next word depends on a hidden topic per
document (so a model must read the context, and a good teacher's predictions carry more than
the one word that happened to follow), its WordPiece vocabulary, and the corpus. The three
models are trained by the real entry point, `pretrain.py` (GLM blank infilling), and the table
reports each model's loss and perplexity on the same held-out batches.
"""
import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TOPICS = {
    "sea": (["fish", "boat", "wave", "shell", "sailor"], ["swims", "floats", "sinks", "drifts"]),
    "farm": (["cow", "horse", "hen", "farmer", "barn"], ["eats", "sleeps", "walks", "grazes"]),
    "city": (["car", "bus", "clerk", "tower", "street"], ["drives", "waits", "stops", "rushes"]),
    "sky": (["bird", "cloud", "star", "plane", "moon"], ["flies", "glows", "rises", "soars"]),
}
ADJECTIVES = ["big", "small", "old", "young", "quiet", "loud", "red", "blue"]
ADVERBS = ["slowly", "quickly", "today", "again", "alone", "together"]
FILLERS = ["the", "a", "and", "then", "."]
TASK_WORDS = ["it", "was", "great", "terrible", "good", "bad"]


def sentence(rng: random.Random, topic: str) -> list:
    nouns, verbs = TOPICS[topic]
    words = [rng.choice(["the", "a"])]
    if rng.random() < 0.6:
        words.append(rng.choice(ADJECTIVES))
    words += [rng.choice(nouns), rng.choice(verbs)]
    if rng.random() < 0.5:
        words.append(rng.choice(ADVERBS))
    return words + ["."]


def write_task(folder: Path, rng: random.Random, num_train: int = 400, num_dev: int = 100) -> Path:
    """An SST-2-format task (GLUE TSV) over the same language: a passage is "great" when it is
    about the sea or the sky, "terrible" otherwise."""
    task = folder / "SST-2"
    task.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", num_train), ("dev", num_dev), ("test", 20)):
        rows = ["index\tsentence" if split == "test" else "sentence\tlabel"]
        for idx in range(count):
            topic = rng.choice(sorted(TOPICS))
            text = " ".join(word for _ in range(2) for word in sentence(rng, topic))
            label = "1" if topic in ("sea", "sky") else "0"
            rows.append(f"{idx}\t{text}" if split == "test" else f"{text}\t{label}")
        (task / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return task


def write_material(folder: Path, num_documents: int, seed: int = 0):
    rng = random.Random(seed)
    lines = []
    for _ in range(num_documents):
        topic = rng.choice(sorted(TOPICS))
        words = []
        for _ in range(rng.randint(3, 5)):
            words += sentence(rng, topic)
        lines.append(" ".join(words))
    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    write_task(folder, rng)
    vocabulary = sorted({w for nouns, verbs in TOPICS.values() for w in nouns + verbs} | set(ADJECTIVES)
                        | set(ADVERBS) | set(FILLERS) | set(TASK_WORDS))
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + vocabulary) + "\n")
    return corpus, vocab


def model_flags(layers: int, hidden: int, heads: int, prefix: str = "") -> list:
    if prefix:
        return [f"--teacher_num_layers={layers}", f"--teacher_hidden_size={hidden}",
                f"--teacher_num_attention_heads={heads}", "--teacher_max_position_embeddings=64"]
    return [f"--num-layers={layers}", f"--hidden-size={hidden}", f"--num-attention-heads={heads}",
            "--max-position-embeddings=64"]


def train(name: str, flags: list, output: Path) -> dict:
    started = time.time()
    done = subprocess.run([sys.executable, str(REPO_ROOT / "pretrain.py"), *flags, f"--save={output}",
                           f"--experiment-name={name}", "--overwrite"], cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"the {name} run failed (exit {done.returncode})")
    records = [json.loads(line) for line in (output / name / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["split"] == "valid"][-1]
    print(f"  {name}: done in {time.time() - started:.0f} s", flush=True)
    return {"loss": valid["loss"], "ppl": valid["ppl"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=str(REPO_ROOT / "runs" / "demo"), help="where data and runs go")
    parser.add_argument("--quick", action="store_true", help="fewer steps (the test suite's reduced version)")
    args = parser.parse_args(argv)
    output = Path(args.output)
    teacher_iters, student_iters = (250, 120) if args.quick else (600, 200)
    corpus, vocab = write_material(output / "data", num_documents=2000)
    common = [f"--tokenizer-path={vocab}", f"--train-data={corpus}", "--split=95,5,0", "--seq-length=32",
              "--batch-size=16", "--bert-prob=1.0", "--lr-decay-style=cosine", "--warmup=0.05", "--seed=1234",
              "--hidden-dropout=0.1", "--attention-dropout=0.1", "--make-vocab-size-divisible-by=8",
              "--log-interval=50", "--eval-iters=20", "--custom_no_summary_writer", "--save-interval=100000"]
    teacher, student = model_flags(3, 96, 4), model_flags(2, 32, 4)
    print("training the teacher, then the student without and with distillation", flush=True)
    results = {
        "teacher": train("teacher", [*common, *teacher, f"--train-iters={teacher_iters}", "--lr=2e-3",
                                     f"--eval-interval={teacher_iters}"], output),
        "student without distillation": train("student", [*common, *student, f"--train-iters={student_iters}",
                                                          "--lr=2e-3", f"--eval-interval={student_iters}"], output),
        "distilled student": train("distilled", [
            *common, *student, f"--train-iters={student_iters}", "--lr=2e-3", f"--eval-interval={student_iters}",
            "--student_model=kd", "--distill_pt_soft", "--distill_pt_hard", "--distill_temperature=1",
            f"--teacher_load_pretrained={output / 'teacher'}", *model_flags(3, 96, 4, prefix="teacher")], output),
    }
    print("\n| model | layers x hidden | held-out loss | perplexity |\n|---|---|---|---|")
    for name, sizes in (("teacher", "3 x 96"), ("distilled student", "2 x 32"),
                        ("student without distillation", "2 x 32")):
        print(f"| {name} | {sizes} | {results[name]['loss']:.3f} | {results[name]['ppl']:.2f} |")
    (output / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
