"""A checkpoint never runs code, never points outside its folder, and a damaged one is named.

The malicious checkpoint holds an object whose unpickling would call os.system("touch MARKER");
every reader (pretrain/finetune --load-pretrained, teachers, --load on the torch and the
DeepSpeed engine, --mt_model_load, change_mp.py and auto_tune's resharding) must refuse it
and the marker must never appear.
"""
import hashlib
import os
import zipfile
from pathlib import Path

import pytest
import torch

from cli_fixtures import finetune_flags, pretrain_flags, pretrained_run, run_script, write_rte
from model.checkpoint import TRACKER_FILENAME, CheckpointError, load_file, read_tracker

pytestmark = pytest.mark.slow   # subprocess, gloo or end-to-end runs: outside the fast tier

TEACHER = ["--teacher_num_layers=2", "--teacher_hidden_size=32", "--teacher_num_attention_heads=4",
           "--teacher_max_position_embeddings=64"]


class RunsAShellCommand:
    """Unpickling this calls os.system(command): what a crafted checkpoint does."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _poison(checkpoint: Path, target: Path, marker: Path, file_pattern: str = "mp_rank_*_model_states.pt") -> Path:
    """A copy of `checkpoint` whose files matching `file_pattern` also hold a shell command."""
    import shutil
    shutil.copytree(checkpoint, target)
    tag = read_tracker(target)
    for path in (target / tag).glob(file_pattern):
        states = torch.load(path, weights_only=False)   # the test's own, trusted file
        states["extra"] = RunsAShellCommand(f"touch {marker}")
        torch.save(states, path)
    return target


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    vocab, corpus, good = pretrained_run(folder)
    marker = folder / "MARKER"
    return folder, vocab, corpus, good, _poison(good, folder / "evil", marker), marker


def _assert_refused(done, marker: Path, code: int = 1) -> None:
    assert done.returncode == code, done.stderr
    assert "refused to load" in done.stderr and "posix.system" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not marker.exists(), "the checkpoint ran code"


def test_the_pickle_really_runs_code_when_loaded_unsafely(material, tmp_path):
    """The fixture is dangerous for real: without weights_only the marker appears."""
    folder, vocab, corpus, good, evil, marker = material
    own_marker = tmp_path / "OWN"
    path = _poison(good, tmp_path / "copy", own_marker)
    torch.load(next((path / read_tracker(path)).glob("*.pt")), weights_only=False)
    assert own_marker.exists() and not marker.exists()


def test_student_weights_never_run_code(material, tmp_path):
    folder, vocab, corpus, good, evil, marker = material
    before = digest(evil)
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path, 2, f"--load-pretrained={evil}"))
    _assert_refused(done, marker)
    assert not (tmp_path / "run").exists() and digest(evil) == before
    data = write_rte(tmp_path)
    done = run_script("finetune.py", finetune_flags(vocab, data, tmp_path / "ft", "--epochs=1",
                                                    f"--load-pretrained={evil}"))
    _assert_refused(done, marker)


def test_teachers_and_combiner_never_run_code(material, tmp_path):
    folder, vocab, corpus, good, evil, marker = material
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "a", 2, "--student_model=kd",
                                                    "--distill_pt_soft", f"--teacher_load_pretrained={evil}",
                                                    *TEACHER))
    _assert_refused(done, marker)
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "b", 2, "--student_model=kd",
                                                    "--distill_pt_soft", f"--mt_load_pretrained={good}:{good}",
                                                    "--multi_teacher_model=mt_bert", "--mt_has_loss", f"--mt_model_load={evil}",
                                                    *TEACHER))
    _assert_refused(done, marker)


def test_resume_never_runs_code(material, tmp_path):
    folder, vocab, corpus, good, evil, marker = material
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path, 4, f"--load={evil}"))
    _assert_refused(done, marker)


@pytest.mark.slow
def test_deepspeed_resume_never_runs_code(material, tmp_path):
    """DeepSpeed reads its files with torch.load(weights_only=False); the engine's reads go
    through the project's reader. The poison sits in the ZeRO optimizer shard, which only
    DeepSpeed itself reads."""
    folder, vocab, corpus, good, evil, marker = material
    ds = ["--deepspeed", "--deepspeed_config=config/config_block_tiny_cpu.json", "--zero_stage=1",
          "--args_to_ds_config"]
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "ds", 2, "--save-interval=2", *ds))
    assert done.returncode == 0, done.stderr
    poisoned = _poison(tmp_path / "ds" / "run", tmp_path / "ds_evil", marker, "zero_pp_rank_*_optim_states.pt")
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "resume", 4, f"--load={poisoned}", *ds))
    _assert_refused(done, marker)
    resumed = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "ok", 4,
                                                       f"--load={tmp_path / 'ds' / 'run'}", *ds))
    assert resumed.returncode == 0, resumed.stderr   # DeepSpeed's own records (loss scaler, ZeRO stage) still load


def test_change_mp_and_auto_tune_resharding_never_run_code(material, tmp_path, capsys):
    folder, vocab, corpus, good, evil, marker = material
    done = run_script("change_mp.py", [str(evil), "2"])
    _assert_refused(done, marker)
    assert not Path(f"{evil}_MP2").exists()
    from tuning.runner import change_mp_convert, reshard_args
    with pytest.raises(CheckpointError, match="refused to load .*posix.system"):
        reshard_args([("--load-pretrained", str(evil)), ("--model-parallel-size", "2")], change_mp_convert, print)
    assert not marker.exists()


def test_the_project_reads_its_own_checkpoints_safely(material):
    """What the project writes loads with weights_only=True (no fallback needed)."""
    folder, vocab, corpus, good, evil, marker = material
    states = load_file(good / "2" / "mp_rank_00_model_states.pt")
    assert {"module", "model_config", "tokenizer", "rng", "train_state"} <= set(states)


@pytest.mark.parametrize("tag", ["../../outside", "/etc", "2/../../x", ".."])
def test_a_tracker_pointing_outside_the_folder_is_refused(material, tmp_path, tag):
    folder, vocab, corpus, good, evil, marker = material
    import shutil
    copy = tmp_path / "ckpt"
    shutil.copytree(good, copy)
    (copy / TRACKER_FILENAME).write_text(tag + "\n")
    before = digest(copy)
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "x", 2, f"--load-pretrained={copy}"))
    assert done.returncode == 1 and "which is not a folder inside" in done.stderr, done.stderr
    assert digest(copy) == before
    with pytest.raises(CheckpointError, match="not a folder inside"):
        read_tracker(copy)


def _flip_a_byte_inside_a_tensor(shard: Path) -> str:
    """Flip one bit in the middle of the largest tensor record (as bit rot would); its name."""
    with zipfile.ZipFile(shard) as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        header = record.header_offset
    raw = bytearray(shard.read_bytes())
    name_length = int.from_bytes(raw[header + 26:header + 28], "little")
    extra_length = int.from_bytes(raw[header + 28:header + 30], "little")
    middle = header + 30 + name_length + extra_length + record.file_size // 2
    raw[middle] ^= 0x10
    shard.write_bytes(bytes(raw))
    return record.filename


def test_a_damaged_shard_is_named_not_loaded(material, tmp_path):
    folder, vocab, corpus, good, evil, marker = material
    import shutil
    copy = tmp_path / "rotten"
    shutil.copytree(good, copy)
    shard = copy / "2" / "mp_rank_00_model_states.pt"
    record = _flip_a_byte_inside_a_tensor(shard)
    torch.load(shard, weights_only=True, mmap=True)   # torch alone would load the damaged tensor silently
    before = digest(copy)
    done = run_script("pretrain.py", pretrain_flags(vocab, corpus, tmp_path / "x", 2, f"--load-pretrained={copy}"))
    assert done.returncode == 1, done.stderr
    assert f"{shard} is damaged: its record {record} does not match the checksum" in done.stderr
    assert digest(copy) == before
    done = run_script("change_mp.py", [str(copy), "2"])
    assert done.returncode == 1 and "is damaged" in done.stderr
