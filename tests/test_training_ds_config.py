"""The DeepSpeed config: shipped JSONs, JSON-over-command-line semantics, errors, and one real
`deepspeed.initialize` on CPU (in a subprocess)."""
import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from training.ds_config import (DeepSpeedConfigError, DeepSpeedSettings, build_deepspeed_config,
                                effective_training_values, write_config_copy)

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "config"
ALL_JSONS = sorted(CONFIG_DIR.glob("*.json"))
TINY6 = str(CONFIG_DIR / "config_block_tiny6.json")
TINY6_TASK = str(CONFIG_DIR / "config_blocklm_tiny6.json")
TINY_CPU = str(CONFIG_DIR / "config_block_tiny_cpu.json")


def _write(tmp_path: Path, config, name: str = "ds.json") -> str:
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return str(path)


def _settings_matching(json_path: str, **changes) -> DeepSpeedSettings:
    """Command-line settings equal to a JSON's values, then `changes`."""
    c = json.loads(Path(json_path).read_text())
    params, zero = c["optimizer"]["params"], c.get("zero_optimization", {})
    values = dict(batch_size=c["train_micro_batch_size_per_gpu"],
                  gradient_accumulation_steps=c["gradient_accumulation_steps"],
                  lr=params["lr"], weight_decay=params["weight_decay"], clip_grad=c["gradient_clipping"],
                  adam_beta1=params["betas"][0], adam_beta2=params["betas"][1], adam_eps=params["eps"],
                  fp16=c["fp16"]["enabled"], zero_stage=zero.get("stage", 0),
                  cpu_offload="offload_optimizer" in zero)
    return DeepSpeedSettings(**{**values, **changes})


# --------------------------------------------------------------------------- the shipped JSONs


def test_the_original_config_names_are_all_there():
    pretrain = {f"config_block_{n}" for n in ("base", "large", "large_chinese", "10B", "10B_longer", "tiny6",
                                              "tiny6_big", "tiny4_fp32", "tiny_cpu")}
    finetune = {f"config_blocklm_{n}" for n in ("base", "large", "10B", "10B_1gpu", "10B_cnndm", "10B_record",
                                                "tiny6", "tiny6_big_task", "tiny6_mini", "tiny6_record", "tiny4_fp32")}
    assert {p.stem for p in ALL_JSONS} == pretrain | finetune


@pytest.mark.parametrize("path", ALL_JSONS, ids=lambda p: p.stem)
def test_every_json_builds_and_keeps_its_values(path):
    raw = json.load(open(path))
    config, notes = build_deepspeed_config(_settings_matching(str(path)), str(path), world_size_dp=2,
                                           cuda_available=True)
    assert notes == []  # command line == JSON: nothing is overridden
    values = effective_training_values(config)
    params = raw["optimizer"]["params"]
    assert raw["optimizer"]["type"] == "Adam"
    assert (values["batch_size"], values["gradient_accumulation_steps"]) == (
        raw["train_micro_batch_size_per_gpu"], raw["gradient_accumulation_steps"])
    assert values["train_batch_size"] == 2 * raw["train_micro_batch_size_per_gpu"] * raw["gradient_accumulation_steps"]
    assert (values["lr"], values["weight_decay"], values["betas"], values["eps"]) == (
        params["lr"], params["weight_decay"], tuple(params["betas"]), params["eps"])
    assert values["gradient_clipping"] == raw["gradient_clipping"]
    assert values["fp16"] is raw["fp16"]["enabled"] and values["bf16"] is False
    assert "cpu_offload" not in raw.get("zero_optimization", {})  # deprecated by DeepSpeed
    if raw["fp16"]["enabled"]:
        assert {k: raw["fp16"][k] for k in ("loss_scale", "loss_scale_window", "hysteresis", "min_loss_scale")} == {
            "loss_scale": 0, "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}  # dynamic scaling


@pytest.mark.parametrize("path", ALL_JSONS, ids=lambda p: p.stem)
def test_fp16_jsons_are_refused_without_cuda(path):
    raw = json.load(open(path))
    settings = _settings_matching(str(path))
    if raw["fp16"]["enabled"]:
        with pytest.raises(DeepSpeedConfigError, match="fp16 is not supported on CPU"):
            build_deepspeed_config(settings, str(path), cuda_available=False)
    else:
        build_deepspeed_config(settings, str(path), cuda_available=False)


def test_tiny6_values_are_the_papers_protocol():
    """Appendix A: the pretraining and fine-tuning configs of the 110M -> 66M experiments."""
    pretrain = effective_training_values(build_deepspeed_config(DeepSpeedSettings(), TINY6, cuda_available=True)[0])
    assert {k: pretrain[k] for k in ("batch_size", "gradient_accumulation_steps", "lr", "betas", "eps",
                                     "weight_decay", "gradient_clipping", "fp16", "optimizer")} == {
        "batch_size": 16, "gradient_accumulation_steps": 1, "lr": 4e-4, "betas": (0.9, 0.98), "eps": 1e-6,
        "weight_decay": 0.1, "gradient_clipping": 1.0, "fp16": True, "optimizer": "Adam"}
    task = effective_training_values(build_deepspeed_config(DeepSpeedSettings(), TINY6_TASK, cuda_available=True)[0])
    assert {k: task[k] for k in ("batch_size", "lr", "betas", "eps", "weight_decay")} == {
        "batch_size": 16, "lr": 1e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1}


def test_10b_finetune_configs_offload_with_zero2():
    for name in ("10B", "10B_1gpu", "10B_cnndm", "10B_record"):
        values = effective_training_values(build_deepspeed_config(
            DeepSpeedSettings(), str(CONFIG_DIR / f"config_blocklm_{name}.json"), cuda_available=True)[0])
        assert (values["zero_stage"], values["cpu_offload"]) == (2, True), name


# --------------------------------------------------------------------------- semantics


def test_without_json_the_command_line_builds_everything():
    settings = DeepSpeedSettings(batch_size=3, gradient_accumulation_steps=5, lr=2e-4, weight_decay=0.05,
                                 clip_grad=0.5, adam_beta1=0.8, adam_beta2=0.95, adam_eps=1e-7, bf16=True,
                                 zero_stage=2, cpu_offload=True)
    config, notes = build_deepspeed_config(settings, None, world_size_dp=4, cuda_available=False)
    assert notes == []
    assert config["train_micro_batch_size_per_gpu"] == 3 and config["gradient_accumulation_steps"] == 5
    assert config["train_batch_size"] == 3 * 5 * 4
    assert config["gradient_clipping"] == 0.5
    assert config["optimizer"] == {"type": "Adam", "params": {"lr": 2e-4, "betas": [0.8, 0.95], "eps": 1e-7,
                                                               "weight_decay": 0.05}}
    assert config["zero_optimization"] == {"stage": 2, "offload_optimizer": {"device": "cpu"}}
    assert config["bf16"] == {"enabled": True} and config["fp16"]["enabled"] is False
    assert effective_training_values(config)["cpu_offload"] is True


def test_json_wins_and_every_overridden_flag_gets_a_note():
    settings = _settings_matching(TINY6, batch_size=8, lr=3e-4, adam_beta2=0.999, fp16=False, zero_stage=2,
                                  cpu_offload=True)
    config, notes = build_deepspeed_config(settings, TINY6, cuda_available=True)
    values = effective_training_values(config)
    assert (values["batch_size"], values["lr"], values["betas"], values["fp16"]) == (16, 4e-4, (0.9, 0.98), True)
    assert (values["zero_stage"], values["cpu_offload"]) == (0, False)
    assert "offload_optimizer" not in config["zero_optimization"]
    assert notes == [
        f"--batch-size=8 is overridden by train_micro_batch_size_per_gpu=16 in {TINY6} "
        "(pass --args_to_ds_config to use the command line's value)",
        f"--lr=0.0003 is overridden by optimizer.params.lr=0.0004 in {TINY6} "
        "(edit the JSON, or patch it with auto_tune's ds_ flags, to change it)",
        f"--adam-beta2=0.999 is overridden by optimizer.params.betas[1]=0.98 in {TINY6} "
        "(edit the JSON, or patch it with auto_tune's ds_ flags, to change it)",
        f"--fp16=off is overridden by fp16.enabled=true in {TINY6} "
        "(pass --args_to_ds_config to use the command line's value)",
        f"--zero_stage=2 is overridden by zero_optimization.stage=0 in {TINY6} "
        "(pass --args_to_ds_config to use the command line's value)",
        f"--cpu_offload=on is overridden by zero_optimization.offload_optimizer.device=\"none\" in {TINY6} "
        "(pass --args_to_ds_config to use the command line's value)",
    ]


def test_a_json_that_names_fp16_decides_the_precision():
    config, notes = build_deepspeed_config(_settings_matching(TINY6, fp16=False, bf16=True), TINY6,
                                           cuda_available=True)
    assert (config["fp16"]["enabled"], config["bf16"]["enabled"]) == (True, False)
    assert any(note.startswith("--bf16=on is overridden by bf16.enabled=false") for note in notes)


def test_keys_the_json_lacks_come_from_the_command_line(tmp_path):
    path = _write(tmp_path, {"train_micro_batch_size_per_gpu": 2,
                             "optimizer": {"type": "Adam", "params": {"lr": 0.01}}})
    settings = DeepSpeedSettings(weight_decay=0.2, clip_grad=0.3, gradient_accumulation_steps=3, bf16=True)
    config, notes = build_deepspeed_config(settings, path, cuda_available=False)
    values = effective_training_values(config)
    assert (values["lr"], values["weight_decay"], values["gradient_clipping"]) == (0.01, 0.2, 0.3)
    assert (values["gradient_accumulation_steps"], values["bf16"], values["betas"]) == (3, True, (0.9, 0.999))
    assert [note.split(" is ")[0] for note in notes] == ["--batch-size=4", "--lr=0.0001"]  # the JSON's 2 and 0.01


def test_args_to_ds_config_writes_batch_gas_zero_offload_precision():
    json_path = str(CONFIG_DIR / "config_blocklm_10B.json")
    settings = DeepSpeedSettings(batch_size=2, gradient_accumulation_steps=8, zero_stage=3, cpu_offload=False,
                                 bf16=True, lr=1e-3, args_to_ds_config=True)
    config, notes = build_deepspeed_config(settings, json_path, world_size_dp=2, cuda_available=False)
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (2, 8)
    assert config["train_batch_size"] == 2 * 8 * 2
    assert config["zero_optimization"]["stage"] == 3 and "offload_optimizer" not in config["zero_optimization"]
    assert config["zero_optimization"]["reduce_bucket_size"] == 50000000  # the JSON's other ZeRO keys stay
    assert (config["fp16"]["enabled"], config["bf16"]["enabled"]) == (False, True)
    assert config["fp16"]["loss_scale_window"] == 1000
    assert config["optimizer"]["params"]["lr"] == 5e-6  # lr is not written by --args_to_ds_config
    # Only what --args_to_ds_config does not write and differs: lr 1e-3 vs 5e-6, beta2 0.999 vs 0.95
    # (weight decay 0.01, beta1 0.9, eps 1e-8 and clipping 1.0 agree with the JSON).
    assert [note.split("=")[0] for note in notes] == ["--lr", "--adam-beta2"]


def test_args_to_ds_config_turns_offload_on():
    settings = DeepSpeedSettings(zero_stage=2, cpu_offload=True, args_to_ds_config=True)
    config, _ = build_deepspeed_config(settings, TINY_CPU, cuda_available=False)
    assert config["zero_optimization"] == {"stage": 2, "offload_optimizer": {"device": "cpu"}}


def test_train_batch_size_is_made_consistent(tmp_path):
    agreeing = _write(tmp_path, {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
                                 "train_batch_size": 32}, "agree.json")
    config, notes = build_deepspeed_config(DeepSpeedSettings(batch_size=4, gradient_accumulation_steps=2), agreeing,
                                           world_size_dp=4, cuda_available=False)
    assert config["train_batch_size"] == 32 and notes == []
    conflicting = _write(tmp_path, {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
                                    "train_batch_size": 64}, "conflict.json")
    config, notes = build_deepspeed_config(DeepSpeedSettings(batch_size=4, gradient_accumulation_steps=2),
                                           conflicting, world_size_dp=4, cuda_available=False)
    assert config["train_batch_size"] == 32
    assert notes == [f"train_batch_size=64 in {conflicting} is dropped: micro batch 4 x gradient accumulation 2 "
                     "x data-parallel size 4 = 32 is used"]


def test_legacy_cpu_offload_is_translated(tmp_path):
    path = _write(tmp_path, {"zero_optimization": {"stage": 2, "cpu_offload": True}})
    config, notes = build_deepspeed_config(DeepSpeedSettings(zero_stage=2, cpu_offload=True), path,
                                           cuda_available=False)
    assert config["zero_optimization"] == {"stage": 2, "offload_optimizer": {"device": "cpu"}}
    assert notes == [f'{path}: deprecated zero_optimization.cpu_offload=true is read as '
                     'offload_optimizer={"device": "cpu"}']


def test_the_json_file_is_not_modified_and_results_repeat():
    before = Path(TINY6).read_text()
    first = build_deepspeed_config(DeepSpeedSettings(batch_size=2, args_to_ds_config=True), TINY6, cuda_available=True)
    second = build_deepspeed_config(DeepSpeedSettings(batch_size=2, args_to_ds_config=True), TINY6, cuda_available=True)
    assert first == second and Path(TINY6).read_text() == before


# --------------------------------------------------------------------------- errors


def test_missing_file_names_the_path(tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match=f"DeepSpeed config {missing} does not exist"):
        build_deepspeed_config(DeepSpeedSettings(), missing, cuda_available=False)


def test_invalid_json_names_file_line_and_column(tmp_path):
    path = _write(tmp_path, '{\n  "gradient_clipping": ,\n}')
    # line 2: two spaces, the 19-character key, ':' at column 22, ' ' at 23, ',' at 24
    with pytest.raises(DeepSpeedConfigError, match=rf"{path} is not valid JSON: Expecting value at line 2, column 24"):
        build_deepspeed_config(DeepSpeedSettings(), path, cuda_available=False)


@pytest.mark.parametrize("config,message", [
    ({"optimizer": {"params": {"lr": "1e-4"}}}, 'optimizer.params.lr must be a non-negative number, got "1e-4"'),
    ({"train_micro_batch_size_per_gpu": 0}, "train_micro_batch_size_per_gpu must be a positive integer, got 0"),
    ({"gradient_accumulation_steps": 2.0}, "gradient_accumulation_steps must be a positive integer, got 2.0"),
    ({"fp16": {"enabled": "yes"}}, 'fp16.enabled must be true or false, got "yes"'),
    ({"optimizer": {"params": {"betas": [0.9]}}}, r"optimizer.params.betas must be a list of two numbers"),
    ({"zero_optimization": {"stage": "2"}}, 'zero_optimization.stage must be an integer, got "2"'),
    ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "gpu"}}},
     r"zero_optimization.offload_optimizer.device must be one of \['none', 'cpu', 'nvme'\]"),
    ({"zero_optimization": 2}, "zero_optimization must be an object, got 2"),
    ([1, 2], "must hold a JSON object, got list"),
])
def test_wrong_types_name_the_key(tmp_path, config, message):
    path = _write(tmp_path, json.dumps(config))
    with pytest.raises(DeepSpeedConfigError, match=message):
        build_deepspeed_config(DeepSpeedSettings(), path, cuda_available=False)


def test_fp16_and_bf16_together_raise(tmp_path):
    with pytest.raises(DeepSpeedConfigError, match="--fp16 and --bf16 are both given"):
        DeepSpeedSettings(fp16=True, bf16=True)
    path = _write(tmp_path, {"fp16": {"enabled": True}, "bf16": {"enabled": True}})
    with pytest.raises(DeepSpeedConfigError, match=rf"fp16 and bf16 are both enabled \(fp16 from fp16.enabled in "
                                                   rf"{path}, bf16 from bf16.enabled in {path}\)"):
        build_deepspeed_config(DeepSpeedSettings(), path, cuda_available=True)


def test_zero_stage_out_of_range_raises(tmp_path):
    with pytest.raises(DeepSpeedConfigError, match="--zero_stage must be 0, 1, 2 or 3, got 4"):
        DeepSpeedSettings(zero_stage=4)
    path = _write(tmp_path, {"zero_optimization": {"stage": 5}})
    with pytest.raises(DeepSpeedConfigError,
                       match=rf"ZeRO stage must be 0, 1, 2 or 3, got 5 \(from zero_optimization.stage in {path}\)"):
        build_deepspeed_config(DeepSpeedSettings(), path, cuda_available=False)


def test_offload_with_stage_0_raises(tmp_path):
    with pytest.raises(DeepSpeedConfigError, match=r"optimizer offload needs ZeRO stage 1, 2 or 3, but the stage is 0 "
                                                   r"\(offload from --cpu_offload, stage from --zero_stage\)"):
        build_deepspeed_config(DeepSpeedSettings(cpu_offload=True), None, cuda_available=False)
    path = _write(tmp_path, {"zero_optimization": {"stage": 0, "offload_optimizer": {"device": "cpu"}}})
    with pytest.raises(DeepSpeedConfigError, match="optimizer offload needs ZeRO stage 1, 2 or 3"):
        build_deepspeed_config(DeepSpeedSettings(), path, cuda_available=False)


def test_fp16_without_cuda_suggests_bf16_or_fp32():
    with pytest.raises(DeepSpeedConfigError, match=r"fp16 is not supported on CPU.*from --fp16: use --bf16 or fp32"):
        build_deepspeed_config(DeepSpeedSettings(fp16=True), None, cuda_available=False)
    config, _ = build_deepspeed_config(DeepSpeedSettings(fp16=True), None, cuda_available=True)
    assert config["fp16"]["enabled"] is True and config["fp16"]["loss_scale"] == 0


def test_a_deepspeed_scheduler_block_raises(tmp_path):
    path = _write(tmp_path, {"scheduler": {"type": "WarmupLR", "params": {}}})
    with pytest.raises(DeepSpeedConfigError, match="has a 'scheduler' block"):
        build_deepspeed_config(DeepSpeedSettings(), path, cuda_available=False)


def test_bad_settings_raise():
    with pytest.raises(DeepSpeedConfigError, match="--batch-size must be a positive integer, got 0"):
        DeepSpeedSettings(batch_size=0)
    with pytest.raises(DeepSpeedConfigError, match="world_size_dp must be a positive integer"):
        build_deepspeed_config(DeepSpeedSettings(), None, world_size_dp=0, cuda_available=False)


# --------------------------------------------------------------------------- the copy


def test_write_config_copy_round_trip(tmp_path):
    config, _ = build_deepspeed_config(DeepSpeedSettings(), TINY_CPU, cuda_available=False)
    folder = tmp_path / "tmp_deepspeed_config"
    first, second = write_config_copy(config, str(folder)), write_config_copy(config, str(folder))
    assert first != second and first.parent == folder
    assert json.loads(first.read_text()) == config == json.loads(second.read_text())
    assert sorted(p.name for p in folder.iterdir()) == sorted([first.name, second.name])  # no temp files left


# --------------------------------------------------------------------------- DeepSpeed itself

_DEEPSPEED_STEP = textwrap.dedent("""
    import copy, json, sys
    import torch
    sys.path.insert(0, ".")
    from training.ds_config import DeepSpeedSettings, build_deepspeed_config
    from training.lr_schedule import AnnealingLR
    import deepspeed

    config, _ = build_deepspeed_config(DeepSpeedSettings(), "config/config_block_tiny_cpu.json", 1,
                                       cuda_available=False)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    reference = copy.deepcopy(model)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    scheduler = AnnealingLR(optimizer, 1e-3, warmup_iter=2, num_iters=10, decay_style="linear")
    scheduler.step()  # iteration 1 of a 2-step warmup: lr 5e-4
    x = 3 * torch.randn(4, 8)
    engine.backward(engine(x).pow(2).mean())
    engine.step()
    # The JSON's "Adam" (torch_adam) with weight decay is decoupled: torch AdamW; clipping at 1.0.
    reference_optimizer = torch.optim.AdamW(reference.parameters(), lr=5e-4, betas=(0.9, 0.999), eps=1e-8,
                                            weight_decay=0.01)
    reference(x).pow(2).mean().backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
    reference_optimizer.step()
    diff = max((a - b).abs().max().item() for a, b in zip(engine.module.parameters(), reference.parameters()))
    print("RESULT " + json.dumps({"diff": diff, "micro": engine.train_micro_batch_size_per_gpu(),
                                  "gas": engine.gradient_accumulation_steps(), "total": engine.train_batch_size(),
                                  "lr": optimizer.param_groups[0]["lr"]}))
""")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_deepspeed_accepts_the_cpu_config_and_takes_a_step():
    """A single-process deepspeed.initialize on CPU. The first run JIT-builds DeepSpeed's
    shared-memory comm op with g++ (about 1.5 minutes on 2 busy cores, then cached in
    ~/.cache/torch_extensions; the config's torch_adam avoids a second build for FusedAdam),
    hence the subprocess and the long timeout."""
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _DEEPSPEED_STEP], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert (result["micro"], result["gas"], result["total"]) == (4, 1, 4)
    assert result["lr"] == 5e-4  # the scheduler drives DeepSpeed's optimizer
    # fp32 on both sides; the update is ~5e-4 per element, a wrong lr, coupled weight decay
    # (~1e-6) or a skipped step would all exceed 1e-7.
    assert result["diff"] < 1e-7
