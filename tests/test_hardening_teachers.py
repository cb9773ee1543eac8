"""Teachers are what their flags say: the architecture, model family and tokenizer a checkpoint
records are checked against the flags, loading is strict, shape errors name what differs, and a
missing model-parallel shard is named as missing."""
import shutil
from pathlib import Path

import pytest
import torch

from cli_fixtures import SPECIAL, WORDS, pretrain_flags, pretrained_run, run_script, write_corpus
from model.checkpoint import CheckpointError, read_tracker
from test_hardening_checkpoints import digest

pytestmark = pytest.mark.slow   # subprocess, gloo or end-to-end runs: outside the fast tier

TEACHER = ["--teacher_num_layers=2", "--teacher_hidden_size=32", "--teacher_num_attention_heads=4",
           "--teacher_max_position_embeddings=64"]
KD = ["--student_model=kd", "--distill_pt_soft"]


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teachers")
    return (folder, *pretrained_run(folder))


def _edited(checkpoint: Path, target: Path, edit) -> Path:
    """A copy of `checkpoint` with `edit(states)` applied to every shard."""
    shutil.copytree(checkpoint, target)
    for path in (target / read_tracker(target)).glob("mp_rank_*_model_states.pt"):
        states = torch.load(path, weights_only=True)
        edit(states)
        torch.save(states, path)
    return target


def test_teacher_flags_that_disagree_with_the_recorded_config_are_named(material, tmp_path):
    folder, vocab, corpus, good = material
    before = digest(good)
    flags = pretrain_flags(vocab, corpus, tmp_path / "a", 2, *KD, f"--teacher_load_pretrained={good}",
                           "--teacher_num_layers=3", "--teacher_hidden_size=32", "--teacher_num_attention_heads=4")
    done = run_script("pretrain.py", flags)
    assert done.returncode == 1, done.stderr
    assert f"teacher 0 {good}: --teacher_num_layers gives num_layers=3, but the checkpoint records num_layers=2" \
        in done.stderr
    flags = pretrain_flags(vocab, corpus, tmp_path / "b", 2, *KD, f"--mt_load_pretrained={good}:{good}",
                           "--mt_num_layers=2:2", "--mt_hidden_size=32:48", "--mt_num_attention_heads=4:4")
    done = run_script("pretrain.py", flags)
    assert done.returncode == 1, done.stderr
    assert "teacher 1" in done.stderr and "--mt_hidden_size (teacher 1) gives hidden_size=48, but the checkpoint " \
        "records hidden_size=32" in done.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()   # refused before anything was written
    assert digest(good) == before


def test_a_teacher_of_another_model_family_is_refused(material, tmp_path):
    folder, vocab, corpus, good = material
    other = _edited(good, tmp_path / "llama", lambda states: states.update(model_family="llama"))
    before = digest(other)
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "s", 2, *KD,
                                                    f"--teacher_load_pretrained={other}", *TEACHER))
    assert done.returncode == 1 and f"teacher 0 {other} holds a llama model, but this run builds a glm model" \
        in done.stderr, done.stderr
    assert digest(other) == before and not (tmp_path / "s").exists()


def test_teacher_loading_is_strict(material, tmp_path):
    """Without a recorded config (an older checkpoint), the tensors themselves must match."""
    folder, vocab, corpus, good = material

    def drop(states):
        del states["module"]["transformer.layers.1.mlp.dense_4h_to_h.bias"]
        states.pop("model_config")

    def add(states):
        states["module"]["transformer.layers.2.mlp.dense_4h_to_h.bias"] = torch.zeros(32)
        states.pop("model_config")

    fresh_corpus = write_corpus(tmp_path)   # no token cache beside it yet
    for name, edit, message in (("missing", drop, "missing from the checkpoint: transformer.layers.1.mlp.dense_4h_to_h"),
                                ("extra", add, "not in the model: transformer.layers.2.mlp.dense_4h_to_h.bias")):
        teacher = _edited(good, tmp_path / name, edit)
        before = digest(teacher)
        done = run_script("pretrain.py", pretrain_flags(vocab, fresh_corpus, tmp_path / f"run_{name}", 2, *KD,
                                                        f"--teacher_load_pretrained={teacher}", *TEACHER))
        assert done.returncode == 1, done.stderr
        assert f"teacher 0 {teacher} does not match the model built from the teacher flags" in done.stderr
        assert message in done.stderr, done.stderr
        assert digest(teacher) == before and not (tmp_path / f"run_{name}").exists()
        assert not (tmp_path / ".glm_cache").exists()   # refused before the corpus was tokenised


def test_a_distilled_students_auxiliary_layers_do_not_fail_a_strict_teacher_load(material, tmp_path):
    """TA chains (TAKD, DGKD): a distilled student becomes the next teacher; its method's
    projections (student.*) are not part of the model."""
    folder, vocab, corpus, good = material
    flags = pretrain_flags(vocab, corpus, tmp_path / "ta", 2, "--save-interval=2", "--student_model=tinybert",
                           f"--teacher_load_pretrained={good}", *TEACHER)
    assert run_script("pretrain.py", flags).returncode == 0
    assistant = tmp_path / "ta" / "run"
    assert any(key.startswith("student.fit_dense") for key in torch.load(
        assistant / "2" / "mp_rank_00_model_states.pt", weights_only=True)["module"])
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "st", 2, *KD,
                                                    f"--teacher_load_pretrained={assistant}", *TEACHER))
    assert done.returncode == 0, done.stderr


def test_a_teacher_with_another_vocabulary_of_the_same_size_is_refused(material, tmp_path):
    folder, vocab, corpus, good = material
    other_folder = tmp_path / "v2"
    other_folder.mkdir()
    words = list(WORDS)
    words[2], words[3] = words[3], words[2]   # "cat" and "dog" trade ids
    other_vocab = other_folder / "vocab.txt"
    other_vocab.write_text("\n".join(SPECIAL + list(".,?!\"'") + words) + "\n")
    done = run_script("pretrain.py", pretrain_flags(other_vocab, corpus, other_folder, 1, "--save-interval=1"))
    assert done.returncode == 0, done.stderr
    teacher = other_folder / "run"
    before = digest(teacher)
    index = len(SPECIAL) + 6 + 2
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "s", 2, *KD,
                                                    f"--teacher_load_pretrained={teacher}", *TEACHER))
    assert done.returncode == 1, done.stderr
    assert f"teacher 0 {teacher} was trained with another vocabulary" in done.stderr
    assert f"the same size (49) but token {index} is 'dog' there and 'cat' here" in done.stderr
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "p", 2, f"--load-pretrained={teacher}"))
    assert done.returncode == 1 and f"token {index} is 'dog' there and 'cat' here" in done.stderr, done.stderr
    assert digest(teacher) == before and not (tmp_path / "s").exists() and not (tmp_path / "p").exists()


def test_shape_errors_name_what_differs(material, tmp_path):
    """Checkpoints without a recorded config reach the tensors: the hint names the real culprit."""
    from model import GLMConfig, GLMModel
    from model.checkpoint import model_states, save_model_shard
    from training.checkpointing import load_model_weights
    built = GLMModel(GLMConfig(num_layers=1, hidden_size=32, num_attention_heads=4, vocab_size=64,
                               max_sequence_length=64))
    cases = {"wider": (GLMConfig(num_layers=1, hidden_size=48, num_attention_heads=4, vocab_size=64,
                                 max_sequence_length=64), "(a different hidden size"),
             "vocab": (GLMConfig(num_layers=1, hidden_size=32, num_attention_heads=4, vocab_size=96,
                                 max_sequence_length=64), "(a different vocabulary")}
    for name, (config, hint) in cases.items():
        save_model_shard(tmp_path / name, "release", 0, model_states(GLMModel(config), 1))
        with pytest.raises(CheckpointError, match=r"word_embeddings.weight has shape .*" + hint.replace("(", r"\(")):
            load_model_weights(built, str(tmp_path / name))


def test_a_missing_model_parallel_shard_is_named(material, tmp_path):
    folder, vocab, corpus, good = material
    from model.checkpoint import change_mp
    copy = tmp_path / "ckpt"
    shutil.copytree(good, copy)
    mp2 = change_mp(copy, 2)
    (mp2 / "2" / "mp_rank_01_model_states.pt").unlink()
    before = digest(mp2)
    for flags in ([f"--load-pretrained={mp2}"], [*KD, f"--teacher_load_pretrained={mp2}", *TEACHER]):
        done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "x", 2, *flags))
        assert done.returncode == 1, done.stderr
        assert "was written at model parallel size 2 but holds 1 shard file(s): missing mp_rank_01_model_states.pt" \
            in done.stderr
    assert digest(mp2) == before
