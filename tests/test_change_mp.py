"""change_mp.py: exact round trips driven by the recorded partition specs, loading a
resharded checkpoint at MP=2, and every error path (nothing written on error)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import mpu
from change_mp import main
from model.checkpoint import change_mp, merge, split
from dist_utils import assert_rel_close, run_distributed
from glm_fixtures import blank_infilling_batch, tiny_config
from model import GLMConfig, GLMModel
from model.checkpoint import (TRACKER_FILENAME, CheckpointError, load_model_shard, model_states, save_model_shard,
                              shard_filename)

REPO_ROOT = Path(__file__).resolve().parents[1]


class StudentWithAuxiliaries(nn.Module):
    """A GLM plus the kinds of parameters distillation methods add: a column-parallel fit
    layer, a row-parallel projection, a replicated plain Linear and a non-parameter buffer."""

    def __init__(self):
        super().__init__()
        self.glm = GLMModel(tiny_config(inverted_bottleneck_mode=True, ib_hidden_size=24, ib_ffn_num=2,
                                        ib_word_emb=8))
        self.fit_dense = mpu.ColumnParallelLinear(52, 36, gather_output=True)
        self.projection = mpu.RowParallelLinear(36, 52)
        self.replicated = nn.Linear(52, 20)
        self.register_buffer("vocab_map", torch.arange(136).flip(0).to(torch.bfloat16))


def _save_mp1(checkpoint_dir: Path, module: nn.Module, config: GLMConfig, **extra) -> None:
    save_model_shard(checkpoint_dir, "release", 0, model_states(module, 1, config.to_dict(), **extra))


@pytest.fixture()
def student_checkpoint(tmp_path):
    torch.manual_seed(5)
    student = StudentWithAuxiliaries()
    path = tmp_path / "student"
    _save_mp1(path, student, student.glm.config, iteration=1234, optimizer={"state": torch.ones(3)})
    return path, student


def test_round_trip_1_2_4_2_1_is_bit_exact(student_checkpoint):
    path, student = student_checkpoint
    mp2 = change_mp(path, 2)
    mp4 = change_mp(mp2, 4)
    mp2_again = change_mp(mp4, 2)
    mp1_again = change_mp(mp2_again, 1)
    original = student.state_dict()
    final = load_model_shard(mp1_again, 0)
    assert list(final["module"]) == list(original)
    for key, value in original.items():
        assert final["module"][key].dtype == value.dtype and torch.equal(final["module"][key], value), key
    for rank in range(2):
        first, second = load_model_shard(mp2, rank)["module"], load_model_shard(mp2_again, rank)["module"]
        assert all(torch.equal(first[k], second[k]) for k in first)
    # Sharded tensors really are split, by the layer's metadata (fit_dense is column-parallel:
    # dim 0; projection is row-parallel: dim 1; the plain Linear and the buffer are replicated).
    shard = load_model_shard(mp4, 3)
    assert shard["module"]["fit_dense.weight"].shape == (9, 52)
    assert shard["module"]["projection.weight"].shape == (52, 9)
    assert shard["module"]["glm.transformer.layers.0.attention.query_key_value.weight"].shape == (18, 52)
    assert torch.equal(shard["module"]["replicated.weight"], original["replicated.weight"])
    assert torch.equal(shard["module"]["vocab_map"], original["vocab_map"])
    # Bookkeeping: MP size updated, per-rank optimizer state dropped, the rest kept.
    assert shard["mp_world_size"] == 4 and shard["optimizer"] is None and shard["iteration"] == 1234
    assert (mp4 / TRACKER_FILENAME).read_text().strip() == "release"


def test_split_and_merge_are_exact_inverses(student_checkpoint):
    path, _ = student_checkpoint
    mp4 = change_mp(path, 4)
    shards = [load_model_shard(mp4, rank) for rank in range(4)]
    again = split(merge(shards), 4)
    for before, after in zip(shards, again):
        assert all(torch.equal(before["module"][k], after["module"][k]) for k in before["module"])


def test_qkv_shards_keep_query_key_value_blocks_together():
    full = {"module": {"qkv": torch.arange(12.0).view(12, 1)}, "partition_specs": {"qkv": {"dim": 0, "stride": 3}}}
    q, k, v = [0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]
    shards = split(full, 2)
    assert shards[0]["module"]["qkv"].view(-1).tolist() == q[:2] + k[:2] + v[:2]
    assert shards[1]["module"]["qkv"].view(-1).tolist() == q[2:] + k[2:] + v[2:]


def _load_worker(rank, world_size, checkpoint_dir, batch, expected_logits):
    states = load_model_shard(checkpoint_dir, rank)
    model = GLMModel(GLMConfig.from_dict(states["model_config"]))
    model.load_state_dict(states["module"])
    ids, position, sep, _, _ = batch
    logits = mpu.gather_from_model_parallel_region(model(ids, position, sep).logits)
    # Same weights, sharded: only all-reduce summation order differs (fp32, ~1e-7).
    assert_rel_close(logits, expected_logits, 1e-5, "logits of the resharded checkpoint")
    return True


@pytest.mark.slow
def test_resharded_checkpoint_gives_the_same_logits(tmp_path):
    torch.manual_seed(9)
    model = GLMModel(tiny_config())
    _save_mp1(tmp_path / "glm", model, model.config)
    batch = blank_infilling_batch(seed=4)
    expected = model(*batch[:3]).logits.detach()
    mp2 = change_mp(tmp_path / "glm", 2)
    assert run_distributed(_load_worker, 2, str(mp2), batch, expected) == [True, True]


def test_same_size_is_a_message_and_writes_nothing(student_checkpoint, capsys):
    path, _ = student_checkpoint
    assert change_mp(path, 1) is None
    assert "already has model parallel size 1" in capsys.readouterr().out
    assert main([str(path), "1"]) == 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["student"]


def test_sizes_that_do_not_divide_fail_and_write_nothing(student_checkpoint, capsys):
    path, _ = student_checkpoint
    assert main([str(path), "3"]) == 1
    assert "model parallel size 3 does not divide num_attention_heads=4" in capsys.readouterr().err
    assert sorted(p.name for p in path.parent.iterdir()) == ["student"]
    # Without a model config, the tensor sizes are checked and the culprit is named.
    full = {"module": {"fit.weight": torch.zeros(6, 2)}, "partition_specs": {"fit.weight": {"dim": 0, "stride": 1}}}
    with pytest.raises(ValueError, match="fit.weight: dimension 0 of size 6 does not divide into 4"):
        split(full, 4)


def test_missing_shard_or_tracker_is_a_clear_error(student_checkpoint, capsys):
    path, _ = student_checkpoint
    mp2 = change_mp(path, 2)
    (mp2 / "release" / shard_filename(1)).unlink()
    with pytest.raises(CheckpointError, match=r"model parallel size 2 but holds 1 shard file\(s\): missing mp_rank_01_model_states.pt"):
        change_mp(mp2, 1)
    (path / TRACKER_FILENAME).unlink()
    assert main([str(path), "2"]) == 1
    assert "latest_checkpointed_iteration.txt is missing" in capsys.readouterr().err
    assert main([str(path.parent / "nowhere"), "2"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_existing_output_is_kept_unless_forced(student_checkpoint):
    path, _ = student_checkpoint
    mp2 = change_mp(path, 2)
    marker = mp2 / "keep.txt"
    marker.write_text("mine")
    with pytest.raises(FileExistsError, match="pass --force"):
        change_mp(path, 2)
    assert marker.read_text() == "mine"
    assert main([str(path), "2", "--force"]) == 0
    assert not marker.exists() and (mp2 / "release" / shard_filename(1)).is_file()


def test_foreign_checkpoint_without_partition_specs_is_refused(tmp_path):
    save_model_shard(tmp_path / "foreign", "7", 0, {"module": {"w": torch.zeros(2)}, "mp_world_size": 1})
    with pytest.raises(CheckpointError, match="no 'partition_specs' entry"):
        change_mp(tmp_path / "foreign", 2)


@pytest.mark.slow
def test_command_line(student_checkpoint):
    path, _ = student_checkpoint
    done = subprocess.run([sys.executable, "change_mp.py", str(path), "2"], cwd=REPO_ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "1 -> 2 model-parallel shards" in done.stdout
    failed = subprocess.run([sys.executable, "change_mp.py", str(path), "5"], cwd=REPO_ROOT, capture_output=True,
                            text=True)
    assert failed.returncode == 1 and "does not divide" in failed.stderr
