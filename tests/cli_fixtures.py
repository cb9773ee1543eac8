"""Tiny corpora, vocabularies and command lines for end-to-end runs of pretrain.py/finetune.py."""
import random
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the a cat dog bird fish sees likes eats chases big small red blue quickly slowly and then over under "
         "near house tree river garden yes no true false maybe it was good bad great terrible").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_vocab(directory: Path) -> Path:
    path = Path(directory) / "vocab.txt"
    path.write_text("\n".join(SPECIAL + list(".,?!\"'") + WORDS) + "\n")
    return path


def write_sorted_vocab(directory: Path, vocab: Path, seed: int = 0) -> Path:
    """A sorted-vocabulary table (GLMD vocabulary compression) over `vocab`'s tokens in a seeded
    random order; the appended command tokens are left out, so the run has to protect them."""
    from model.vocab_map import write_vocab_table
    tokens = Path(vocab).read_text().split()
    order = list(range(len(tokens)))
    random.Random(seed).shuffle(order)
    path = Path(directory) / "BertWordPieceTokenizer_bert-base-uncased.txt"
    write_vocab_table(str(path), order, [tokens[i] for i in order], [len(order) - r for r in range(len(order))])
    return path


def write_corpus(directory: Path, num_documents: int = 120, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = []
    for _ in range(num_documents):
        sentences = []
        for _ in range(rng.randint(2, 4)):
            sentences.append(" ".join(rng.choice(WORDS[:22]) for _ in range(rng.randint(4, 9))) + ".")
        lines.append(" ".join(sentences))
    path = Path(directory) / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_model_flags(layers: int = 2, hidden: int = 32, heads: int = 4, prefix: str = "") -> List[str]:
    dash = "_" if prefix else "-"
    return [f"--{prefix}num{dash}layers={layers}", f"--{prefix}hidden{dash}size={hidden}",
            f"--{prefix}num{dash}attention{dash}heads={heads}", f"--{prefix}max{dash}position{dash}embeddings=64"]


def pretrain_flags(vocab: Path, corpus: Path, save: Path, iters: int, *extra: str) -> List[str]:
    flags = [f"--tokenizer-path={vocab}", f"--train-data={corpus}", f"--save={save}", "--experiment-name=run",
             f"--train-iters={iters}", "--seq-length=32", "--batch-size=4", "--bert-prob=1.0", "--split=90,10,0",
             "--lr=1e-3", "--warmup=0.1", "--lr-decay-style=cosine", "--log-interval=1", "--eval-interval=1000",
             "--eval-iters=2", "--hidden-dropout=0.1", "--seed=7", "--custom_no_summary_writer",
             "--make-vocab-size-divisible-by=16", *tiny_model_flags(), *extra]
    return flags


def pretrained_run(folder: Path, iters: int = 2):
    """A tiny pretraining run saved at its last iteration under folder/good/run, with its
    vocabulary and corpus: (vocab, corpus, run folder)."""
    vocab, corpus = write_vocab(folder), write_corpus(folder)
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, Path(folder) / "good", iters,
                                                    f"--save-interval={iters}"))
    assert done.returncode == 0, done.stderr
    return vocab, corpus, Path(folder) / "good" / "run"


def run_script(script: str, flags: Sequence[str], timeout: int = 300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *flags], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def write_rte(directory: Path, num_train: int = 64, num_dev: int = 24, seed: int = 0) -> Path:
    """An RTE-format task (SuperGLUE JSONL) the tiny vocabulary covers: the hypothesis is
    entailed iff it repeats the premise's animal."""
    import json
    rng = random.Random(seed)
    animals, others = ["cat", "dog", "bird", "fish"], ["house", "tree", "river", "garden"]
    folder = Path(directory) / "RTE"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", num_train), ("val", num_dev), ("test", 4)):
        rows = []
        for idx in range(count):
            animal = rng.choice(animals)
            premise = f"the {animal} {rng.choice(['sees', 'likes', 'chases'])} the {rng.choice(others)} ."
            entailed = rng.random() < 0.5
            other = animal if entailed else rng.choice([a for a in animals if a != animal])
            row = {"premise": premise, "hypothesis": f"it was a {other} .", "idx": idx}
            if split != "test":
                row["label"] = "entailment" if entailed else "not_entailment"
            rows.append(json.dumps(row))
        (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def finetune_flags(vocab: Path, data_dir: Path, save: Path, *extra: str) -> List[str]:
    return [f"--tokenizer-path={vocab}", "--task=RTE", f"--data-dir={data_dir}", f"--save={save}", "--finetune",
            "--cloze-eval", "--seq-length=32", "--batch-size=8", "--eval-batch-size=8", "--lr=1e-3",
            "--warmup=0.1", "--lr-decay-style=linear", "--log-interval=1", "--seed=7", "--custom_no_summary_writer",
            "--make-vocab-size-divisible-by=16", *tiny_model_flags(), *extra]
