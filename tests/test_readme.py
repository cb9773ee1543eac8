"""The README is the user's manual: its demo runs and its claim holds (reduced), every shell
command in it runs as written (with fewer steps), its Python examples run, and CI runs its
test command."""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow   # subprocess, gloo or end-to-end runs: outside the fast tier

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
CI_SCRIPT = REPO_ROOT / ".ci" / "run"
DEMO_COMMAND = "pip install -r requirements.txt && python examples/kd_demo.py"
TEST_COMMAND_MARK = "python -m pytest"
# Appended to the README's commands so they finish in seconds (argparse keeps the last value).
FEWER_STEPS = {"pretrain.py": ["--train-iters=3", "--eval-interval=3", "--eval-iters=2"],
               "finetune.py": ["--epochs=1"], "change_mp.py": [], "auto_tune.py": [], "vocab_sort.py": [],
               "tiny_hf_models.py": [], "export_hf.py": []}


def _blocks(language: str):
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def _commands():
    commands = []
    for block in _blocks("bash"):
        commands += [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return commands


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The README demo, reduced (--quick), in a scratch folder that then stands for the repo root."""
    root = tmp_path_factory.mktemp("readme")
    done = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "kd_demo.py"), "--quick",
                           "--output", str(root / "runs" / "demo")], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return root, done.stdout


def test_the_distilled_student_beats_the_same_student_without_distillation(demo):
    _, table = demo
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"[0-9.]+", cells[2]):
            rows[cells[0]] = float(cells[2])
    assert set(rows) == {"teacher", "distilled student", "student without distillation"}, table
    assert rows["teacher"] < rows["distilled student"] < rows["student without distillation"], table


def _argv(command: str, root: Path):
    """The command with the repository's scripts and configs addressed from the scratch root."""
    tokens = [str(REPO_ROOT / t) if t.endswith(".py") and not t.startswith("-")
              else t.replace("=config/", f"={REPO_ROOT}/config/") for t in shlex.split(command)]
    launcher = {"python": [sys.executable], "torchrun": [sys.executable, "-m", "torch.distributed.run",
                                                          "--master_port=29641"],
                "deepspeed": [shutil.which("deepspeed"), "--master_port=29642"]}[tokens[0]]
    script = next(Path(t).name for t in tokens if t.endswith(".py") and not t.startswith("-"))
    return launcher + tokens[1:] + FEWER_STEPS[script]


def test_every_readme_command_runs(demo):
    root, _ = demo
    commands = _commands()
    assert DEMO_COMMAND in commands and any(TEST_COMMAND_MARK in c for c in commands)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ran = 0
    for command in commands:
        if command == DEMO_COMMAND or TEST_COMMAND_MARK in command:
            continue   # the demo ran (reduced) in the fixture; CI runs the test command
        done = subprocess.run(_argv(command, root), cwd=root, capture_output=True, text=True, timeout=900, env=env)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        ran += 1
    # pretrain, two finetune, torchrun, deepspeed, change_mp; Hugging Face: stand-in folders, two pretrain
    # runs, export, two finetune runs; GLMD: vocab_sort, GLMD+al x 3, GLMD-vc x 3; auto_tune: sweep,
    # show_tune, test; TAKD x 2, DGKD
    assert ran == 25
    assert (root / "runs/demo/hf-pkd-sst2/hf_student/model.safetensors").is_file()
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
    llama = AutoModelForCausalLM.from_pretrained(str(root / "runs/demo/llama-student"), local_files_only=True)
    assert llama.config.num_hidden_layers == 2                          # stride:2 of the 4-layer teacher
    bert = AutoModelForMaskedLM.from_pretrained(str(root / "runs/demo/hf-bert-tinybert/hf_student"),
                                                local_files_only=True)
    assert bert.config.num_hidden_layers == 2
    table = root / ".pytorch_pretrained_bert" / "BertWordPieceTokenizer_bert-base-uncased.txt"
    assert table.is_file()
    from model.checkpoint import load_model_shard
    glmd_al = load_model_shard(root / "runs/demo/glmd-al-pt", 0)
    kept = glmd_al["model_config"]["map_vocab_size"]
    assert 0 < kept < glmd_al["model_config"]["vocab_size"] and glmd_al["model_config"]["unmap_vocab_output"]
    assert glmd_al["module"]["word_embeddings.weight"].shape == (kept, 16)     # ALBERT width 16
    assert int(glmd_al["module"]["origin_id_mask_map"].sum()) == kept
    for run in ("glmd-al-ft2", "glmd-vc-ft2"):
        assert (root / "runs/demo" / run / "best").is_dir(), run
    assert (root / "runs/demo/student-kd_MP2/latest_checkpointed_iteration.txt").is_file()
    assert (root / "runs/demo/student-sst2/best").is_dir()
    for run in ("assistant-sst2", "student-takd", "student-dgkd"):   # the teacher-assistant chains
        assert (root / "runs/demo" / run / "best").is_dir(), run
    assert "| kd | 1 | " in (root / "runs/demo/tune/tune.md").read_text()


def test_python_examples_run():
    from distill import distill_model
    registry = dict(distill_model.STUDENT_MODELS)
    try:
        namespaces = []
        for index, block in enumerate(_blocks("python")):
            namespace = {}
            exec(compile(block, f"README.md python block {index}", "exec"), namespace)
            namespaces.append(namespace)
        # The "adding a method" example really works as a method.
        method = distill_model.STUDENT_MODELS["last_hidden_mse"]
        from glm_fixtures import blank_infilling_batch, tiny_config
        from model import GLMModel
        from distill.distill_model import DistillBatch, DistillOptions, StepInfo
        torch.manual_seed(0)
        student = method(GLMModel(tiny_config()), DistillOptions())
        teacher = GLMModel(tiny_config())
        ids, position, sep, target, loss_mask = blank_infilling_batch()
        step = StepInfo()
        student.begin_step(step)
        s_out = student(ids, position, sep, taps=student.student_taps(step))
        t_out = teacher(ids, position, sep, taps=student.teacher_taps(0, step))
        loss, metrics = student.inter_loss(s_out, t_out, DistillBatch("pretrain"), step)
        expected = (s_out.taps["output"] - t_out.taps["output"]).pow(2).flatten(1).mean(1)   # per sample [B]
        torch.testing.assert_close(loss, expected)   # weight 1 by default
        assert set(metrics) == {"last_hidden/mse"}
        # ... and its option is a flag: offered, parsed, validated, refused for another method.
        from training.arguments import build_help, parse_run_config
        from training.config import ConfigError
        assert "--last_hidden_mse_weight" in build_help("pretrain", "pretrain.py")
        argv = ["--teacher_load_pretrained=t", "--student_model=last_hidden_mse", "--last_hidden_mse_weight=0.5"]
        assert parse_run_config(argv, "pretrain", "t").distill.method_options.last_hidden_mse_weight == 0.5
        with pytest.raises(ConfigError, match="last_hidden_mse_weight must be >= 0"):
            parse_run_config(argv[:-1] + ["--last_hidden_mse_weight=-1"], "pretrain", "t")
        with pytest.raises(ConfigError, match="is an option of --student_model=last_hidden_mse"):
            parse_run_config(["--teacher_load_pretrained=t", "--student_model=kd", argv[-1]], "pretrain", "t")
    finally:
        distill_model.STUDENT_MODELS.clear()
        distill_model.STUDENT_MODELS.update(registry)


def test_ci_runs_the_readme_test_command():
    test_command = next(c for c in _commands() if TEST_COMMAND_MARK in c)
    assert test_command in CI_SCRIPT.read_text()


def test_the_original_recipes_listed_parse():
    from training.arguments import parse_run_config
    block = next(b for b in _blocks("text") if "finetune:" in b)
    student = ["--num-layers=6", "--hidden-size=768", "--num-attention-heads=12"]
    one_teacher = ["--teacher_load_pretrained=/t", "--teacher_num_layers=12", "--teacher_hidden_size=768",
                   "--teacher_num_attention_heads=12"]
    two_teachers = ["--mt_num_attention_heads=12:16", "--mt_hidden_size=768:1024", "--mt_num_layers=12:24",
                    "--mt_load_pretrained=/a:/b"]
    lines = [line for line in block.splitlines() if ":" in line]
    assert len(lines) == 12
    for line in lines:
        name, rest = line.split(maxsplit=1)
        stage, flags = rest.split(":", 1)
        flags = [] if flags.strip().startswith("(") else flags.split()
        teachers = two_teachers if "multi_teacher_model" in " ".join(flags) else one_teacher
        teachers = teachers if any(f.startswith("--student_model") for f in flags) else []
        task = ["--task=RTE"] if stage == "finetune" else []
        config = parse_run_config([*student, *task, *teachers, *flags], stage, "recipe")
        assert config.stage == stage, line
