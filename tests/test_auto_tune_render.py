"""auto_tune's command rendering: golden commands for the seeds' three auto_tune examples (GLMD+al
110M-66M, GLMD-vc 10B-2B, TinyBERT 340M-66M), the `;` lists and rates of the DeepSpeed patches,
the again-stages and the task_t_load registry; and, where ../shared holds them, every command of
six of the original's own logs reproduced flag for flag."""
import json
import re
import shlex
import subprocess
import sys

import pytest

from cli_fixtures import REPO_ROOT
from tuning.cli import build_parser, build_spec, main
from tuning.render import launch_command, plan_sweep

ROOTS = ["--data_root=../GLM/data/english_data/superglue", "--checkpoint_root=../GLM/data"]
STAMP, PORT = "230101_120000.000000", 12345
ALL_TASKS = "--tasks=record,copa,wsc,rte,boolq,wic,cb,multirc,wsc_generative"


def render(argv, gpus=None):
    args, extra = build_parser().parse_known_args([*argv, *ROOTS])
    spec = build_spec(args, extra, "tune")
    plans = plan_sweep(spec, STAMP)
    return plans, [launch_command(p, spec.py_file, args.launcher, gpus or args.gpus, PORT).shell() for p in plans]


def golden(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- the seeds' examples
GLMD_AL = ["--py_file=distill/finetune.py", "--gpus=2,3", "--model=block_tiny6",
           "--model_path=checkpoints/distill/paper/12.768-6.768_64-15w_glmd-dta_vc.5de-albert", "--task_t_load=base",
           ALL_TASKS, "--student_model=logitsdistil", "--distill_temperature=15", "--map_vocab_size=0.5",
           "--distill_logit_mask_map", "--unmap_vocab_output", "--logitsdistil_mask_pad", "--compress_word_emb=384",
           "--del_checkpoint_activations", "--again_1__distill_ft_soft", "--again_1__distill_temperature=1",
           "--again_1__logitsdistil_wo_inter", "--seed=1759",
           "--ds_train_micro_batch_size_per_gpu=16;16;32;16;16;16;32;16;32", "--ds_gradient_accumulation_steps=2",
           "--rate_ds_train_micro_batch_size_per_gpu=0.25", "--rate_ds_gradient_accumulation_steps=1",
           "--ds_optimizer__params__lr=2E-05;5E-06;2E-05;2E-05;2E-05;2E-05;2E-05;5E-06;2E-05"]
GLMD_AL_RECORD = """
NCCL_DEBUG=info NCCL_IB_DISABLE=0 NCCL_NET_GDR_LEVEL=2 deepspeed --master_port=12345 --include=localhost:2,3 --hostfile=
distill/finetune.py --finetune --cloze-eval --experiment-name=blank-tiny6-ReCoRD-230101_120000.000000 --task=ReCoRD
--data-dir=../GLM/data/english_data/superglue/ReCoRD
--save=../GLM/data/checkpoints/distill/paper/12.768-6.768_64-15w_glmd-dta_vc.5de-albert/ft_logitsdistil/ReCoRD
--seq-length=512 --eval-batch-size=16 --save-epoch=100000
--block-lm --num-layers=6 --hidden-size=768 --num-attention-heads=12 --max-position-embeddings=512
--tokenizer-model-type=bert-base-uncased --tokenizer-type=BertWordPieceTokenizer
--load-pretrained=../GLM/data/checkpoints/distill/paper/12.768-6.768_64-15w_glmd-dta_vc.5de-albert --fp16
--lr-decay-style=linear --warmup=0.1 --weight-decay=1.0e-1 --pattern-id=0
--save-interval=10000 --log-interval=50 --eval-interval=1000 --eval-iters=100
--batch-size=8 --epochs=5 --lr=1e-5 --overwrite
--deepspeed-activation-checkpointing --deepspeed --deepspeed_config=tune/deepspeed_config/record.json
--student_model=logitsdistil --distill_temperature=15 --map_vocab_size=0.5 --distill_logit_mask_map
--unmap_vocab_output --logitsdistil_mask_pad --compress_word_emb=384 --seed=1759
--teacher_load_pretrained=../GLM/data/checkpoints/pretrain/blocklm-base-blank/finetune/ReCoRD/blank-base-ReCoRD-220813_083745
--teacher_num_layers=12 --teacher_hidden_size=768 --teacher_num_attention_heads=12
--teacher_max_position_embeddings=512 --teacher_fp16
--custom_tmp_result=tune/results/00_record_stage0.json
"""
GLMD_AL_RECORD_AGAIN = """
NCCL_DEBUG=info NCCL_IB_DISABLE=0 NCCL_NET_GDR_LEVEL=2 deepspeed --master_port=12345 --include=localhost:2,3 --hostfile=
distill/finetune.py --finetune --cloze-eval --experiment-name=blank-tiny6-ReCoRD-230101_120000.000000 --task=ReCoRD
--data-dir=../GLM/data/english_data/superglue/ReCoRD
--save=../GLM/data/checkpoints/distill/paper/12.768-6.768_64-15w_glmd-dta_vc.5de-albert/ft_logitsdistil/ReCoRD/blank-tiny6-ReCoRD-230101_120000.000000/ft_logitsdistil/ReCoRD
--seq-length=512 --eval-batch-size=16 --save-epoch=100000
--block-lm --num-layers=6 --hidden-size=768 --num-attention-heads=12 --max-position-embeddings=512
--tokenizer-model-type=bert-base-uncased --tokenizer-type=BertWordPieceTokenizer
--load-pretrained=../GLM/data/checkpoints/distill/paper/12.768-6.768_64-15w_glmd-dta_vc.5de-albert/ft_logitsdistil/ReCoRD/blank-tiny6-ReCoRD-230101_120000.000000
--fp16 --lr-decay-style=linear --warmup=0.1 --weight-decay=1.0e-1 --pattern-id=0
--save-interval=10000 --log-interval=50 --eval-interval=1000 --eval-iters=100
--batch-size=8 --epochs=5 --lr=1e-5 --overwrite
--deepspeed-activation-checkpointing --deepspeed --deepspeed_config=tune/deepspeed_config/record.json
--teacher_load_pretrained=../GLM/data/checkpoints/pretrain/blocklm-base-blank/finetune/ReCoRD/blank-base-ReCoRD-220813_083745
--teacher_num_layers=12 --teacher_hidden_size=768 --teacher_num_attention_heads=12
--teacher_max_position_embeddings=512 --teacher_fp16
--student_model=logitsdistil --distill_temperature=1 --map_vocab_size=0.5 --distill_logit_mask_map
--unmap_vocab_output --logitsdistil_mask_pad --compress_word_emb=384 --seed=1759
--distill_ft_soft --logitsdistil_wo_inter --custom_first_eval
--custom_tmp_result=tune/results/01_record_stage1.json
"""


def _ds(plan):
    config = plan.ds_config
    return (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"],
            config["optimizer"]["params"]["lr"])


def test_glmd_al_example_renders_the_original_commands():
    plans, commands = render(GLMD_AL)
    assert len(plans) == 18 and [(p.task.key, p.stage) for p in plans[:4]] == [
        ("record", 0), ("record", 1), ("copa", 0), ("copa", 1)]
    assert commands[0] == golden(GLMD_AL_RECORD)
    assert commands[1] == golden(GLMD_AL_RECORD_AGAIN)
    # ';' lists align with --tasks; micro batch x 0.25; gas x 1; the lr list cast to the JSON's float.
    per_task = [_ds(p) for p in plans if p.stage == 0]
    assert [m for m, _, _ in per_task] == [4, 4, 8, 4, 4, 4, 8, 4, 8]
    assert {g for _, g, _ in per_task} == {2}
    assert [lr for _, _, lr in per_task] == [2e-5, 5e-6, 2e-5, 2e-5, 2e-5, 2e-5, 2e-5, 5e-6, 2e-5]
    assert all(p.ds_config_path == f"tune/deepspeed_config/{p.task.key}.json" for p in plans)
    assert all(p.ds_config["fp16"]["enabled"] for p in plans)    # only --del_fp16 turns it off
    wsc = next(c for p, c in zip(plans, commands) if p.task.key == "wsc" and p.stage == 0)
    assert ("--data-dir=../GLM/data/english_data/superglue/WSC-negative --save=../GLM/data/checkpoints/distill/paper/"
            "12.768-6.768_64-15w_glmd-dta_vc.5de-albert/ft_logitsdistil/WSC --seq-length=128") in wsc
    assert "--loss-func=mix --wsc-negative --length-penalty=1 --pattern-id=2" in wsc
    generative = next(c for p, c in zip(plans, commands) if p.task.key == "wsc_generative" and p.stage == 0)
    assert "--experiment-name=blank-tiny6-WSC_generative-" in generative and "--pattern-id" not in generative
    assert "--teacher_load_pretrained=../GLM/data/checkpoints/pretrain/blocklm-base-blank/finetune/WSC/" \
           "blank-base-WSC_generative-220813_065345" in generative


GLMD_VC = ["--py_file=distill/finetune.py", "--gpus=0,1,2,3,4,5,6,7", "--model=model_blocklm_10B", "--num-layers=36",
           "--hidden-size=2048", "--num-attention-heads=32",
           "--model_path=checkpoints/distill/paper/48.4096-36.2048_64-15w_glmd-vc-dta_MP4", "--model-parallel-size=2",
           "--task_t_load=10b", "--tasks=record", "--student_model=logitsdistil", "--distill_temperature=15",
           "--logitsdistil_mask_pad", "--again_1__distill_ft_soft", "--again_1__distill_temperature=1",
           "--again_1__logitsdistil_wo_inter", "--seed=1234", "--ds_train_micro_batch_size_per_gpu=1",
           "--ds_gradient_accumulation_steps=4", "--ds_optimizer__params__lr=1E-05", "--eval-batch-size=4"]
GLMD_VC_RECORD = """
NCCL_DEBUG=info NCCL_IB_DISABLE=0 NCCL_NET_GDR_LEVEL=2 deepspeed --master_port=12345
--include=localhost:0,1,2,3,4,5,6,7 --hostfile= distill/finetune.py --finetune --cloze-eval
--experiment-name=blocklm-10B-ReCoRD-230101_120000.000000 --task=ReCoRD --data-dir=../GLM/data/english_data/superglue/ReCoRD
--save=../GLM/data/checkpoints/distill/paper/48.4096-36.2048_64-15w_glmd-vc-dta_MP4/ft_logitsdistil/ReCoRD
--seq-length=512 --checkpoint-activations --eval-batch-size=4 --save-epoch=100000
--block-lm --task-mask --num-layers=36 --hidden-size=2048 --num-attention-heads=32 --max-position-embeddings=1024
--tokenizer-type=GPT2BPETokenizer --load-pretrained=../GLM/data/checkpoints/distill/paper/48.4096-36.2048_64-15w_glmd-vc-dta_MP4
--fp16 --lr-decay-style=linear --warmup=0.1 --weight-decay=1.0e-1 --pattern-id=0
--save-interval=10000 --log-interval=50 --eval-interval=1000 --eval-iters=100
--batch-size=2 --epochs=5 --lr=1e-5 --overwrite
--deepspeed-activation-checkpointing --deepspeed --deepspeed_config=tune/deepspeed_config/record.json
--model-parallel-size=2 --student_model=logitsdistil --distill_temperature=15 --logitsdistil_mask_pad --seed=1234
--teacher_load_pretrained=../GLM/data/checkpoints/pretrain/blocklm-xxlarge_MP4/finetune/ReCoRD
--teacher_num_layers=48 --teacher_hidden_size=4096 --teacher_num_attention_heads=64
--teacher_max_position_embeddings=1024 --teacher_fp16
--custom_tmp_result=tune/results/00_record_stage0.json
"""


def test_glmd_vc_10b_example_with_its_own_teacher_registry(tmp_path):
    registry = tmp_path / "teachers.json"
    registry.write_text(json.dumps({"10b": {
        "comments": "GLM-10B fine-tuned per task, 4-way model parallel",
        "args": [["--teacher_load_pretrained", ["10b"]], ["--teacher_num_layers", 48],
                 ["--teacher_hidden_size", 4096], ["--teacher_num_attention_heads", 64],
                 ["--teacher_max_position_embeddings", 1024], ["--teacher_fp16", None]],
        "tasks": {"record": "checkpoints/pretrain/blocklm-xxlarge_MP4/finetune/ReCoRD"}}}))
    plans, commands = render([*GLMD_VC, f"--task_t_load_path={registry}"])
    assert len(plans) == 2 and commands[0] == golden(GLMD_VC_RECORD)
    again = commands[1]
    # The forwarded architecture overrides the template in place; stage 1 moves the teacher first,
    # overrides the temperature in place, appends the new switches, evaluates its start first.
    assert "--num-layers=36 --hidden-size=2048 --num-attention-heads=32 --max-position-embeddings=1024" in again
    assert ("--teacher_fp16 --model-parallel-size=2 --student_model=logitsdistil --distill_temperature=1 "
            "--logitsdistil_mask_pad --seed=1234 --distill_ft_soft --logitsdistil_wo_inter "
            "--custom_first_eval") in again
    assert f"--load-pretrained={plans[0].run_dir} " in again
    assert [_ds(p) for p in plans] == [(1, 4, 1e-5)] * 2


TINYBERT = ["--py_file=distill/finetune.py", "--gpus=0,1,2,3,4,5,6,7", "--model=block_tiny6",
            "--model_path=checkpoints/distill/paper/24.1024-6.768_64-15w_tinybert", "--task_t_load=large", ALL_TASKS,
            "--num-attention-heads=16", "--student_model=tinybert", "--again_1__distill_ft_soft",
            "--again_1__tinybert_wo_inter", "--seed=6899",
            "--ds_train_micro_batch_size_per_gpu=32;32;32;32;16;16;16;16;16", "--ds_gradient_accumulation_steps=1",
            "--rate_ds_train_micro_batch_size_per_gpu=0.125", "--rate_ds_gradient_accumulation_steps=1",
            "--ds_optimizer__params__lr=1E-05;5E-06;2E-05;1E-05;1E-05;1E-05;2E-05;2E-05;5E-06"]
TINYBERT_WIC_AGAIN = """
NCCL_DEBUG=info NCCL_IB_DISABLE=0 NCCL_NET_GDR_LEVEL=2 deepspeed --master_port=12345
--include=localhost:0,1,2,3,4,5,6,7 --hostfile= distill/finetune.py --finetune --cloze-eval
--experiment-name=blank-tiny6-WiC-230101_120000.000000 --task=WiC --data-dir=../GLM/data/english_data/superglue/WiC
--save=../GLM/data/checkpoints/distill/paper/24.1024-6.768_64-15w_tinybert/ft_tinybert/WiC/blank-tiny6-WiC-230101_120000.000000/ft_tinybert/WiC
--seq-length=256 --checkpoint-activations --eval-batch-size=16 --save-epoch=100000
--block-lm --num-layers=6 --hidden-size=768 --num-attention-heads=16 --max-position-embeddings=512
--tokenizer-model-type=bert-base-uncased --tokenizer-type=BertWordPieceTokenizer
--load-pretrained=../GLM/data/checkpoints/distill/paper/24.1024-6.768_64-15w_tinybert/ft_tinybert/WiC/blank-tiny6-WiC-230101_120000.000000
--fp16 --lr-decay-style=linear --warmup=0.1 --weight-decay=1.0e-1 --pattern-id=1
--save-interval=10000 --log-interval=50 --eval-interval=10000000 --eval-iters=100
--batch-size=2 --epochs=30 --lr=1e-5 --overwrite
--deepspeed-activation-checkpointing --deepspeed --deepspeed_config=tune/deepspeed_config/wic.json
--teacher_load_pretrained=../GLM/data/checkpoints/pretrain/blocklm-large-blank/finetune/WiC/blank-large-WiC-220813_142454
--teacher_num_layers=24 --teacher_hidden_size=1024 --teacher_num_attention_heads=16 --teacher_max_position_embeddings=512
--student_model=tinybert --seed=6899 --distill_ft_soft --tinybert_wo_inter --custom_first_eval
--custom_tmp_result=tune/results/11_wic_stage1.json
"""


def test_tinybert_example_with_rates_and_again_stage():
    plans, commands = render(TINYBERT)
    assert commands[11] == golden(TINYBERT_WIC_AGAIN)
    per_task = [_ds(p) for p in plans if p.stage == 0]
    assert [m for m, _, _ in per_task] == [4, 4, 4, 4, 2, 2, 2, 2, 2]   # 32 or 16 x 0.125
    assert [lr for _, _, lr in per_task] == [1e-5, 5e-6, 2e-5, 1e-5, 1e-5, 1e-5, 2e-5, 2e-5, 5e-6]
    assert {g for _, g, _ in per_task} == {1}
    assert "--distill_ft_soft" not in commands[10] and "--custom_first_eval" not in commands[10]


# --------------------------------------------------------------------------- the rules
def test_again_toggles_identical_flags_off_and_swaps_teacher_sets():
    plans, commands = render(["--tasks=rte", "--task_t_load=base_large", "--student_model=kd", "--distill_ft_soft",
                              "--distill_temperature=10", "--rl_kd_only_avg", "--again_1__rl_kd_only_avg",
                              "--again_1__task_t_load=base_base_large", "--again_2__distill_ft_soft",
                              "--again_2__distill_ft_hard", "--gpus=0"])
    assert [p.stage for p in plans] == [0, 1, 2]
    base, first, second = (shlex.split(c) for c in commands)
    assert "--rl_kd_only_avg" in base and "--rl_kd_only_avg" not in first and "--rl_kd_only_avg" in second
    # Stage 1's teachers: a literal path (the pretrained base) then two registry entries, ':'-joined.
    assert ("--mt_load_pretrained=../GLM/data/checkpoints/pretrain/blocklm-base-blank:"
            "../GLM/data/checkpoints/pretrain/blocklm-base-blank/finetune/RTE/blank-base-RTE-220813_065724:"
            "../GLM/data/checkpoints/pretrain/blocklm-large-blank/finetune/RTE/blank-large-RTE-220813_130259") in first
    assert "--mt_num_layers=12:12:24" in first and "--mt_num_layers=12:24" in second   # each stage from the base
    assert "--distill_ft_soft" not in second and "--distill_ft_hard" in second
    assert plans[2].args[[f for f, _ in plans[2].args].index("--load-pretrained")][1] == plans[1].run_dir


def test_epochs_task_model_paths_and_cpu_launchers():
    plans, commands = render(["--tasks=rte,cb", "--epoch_rate=0.33", "--cb_model_path=/abs/cb-student",
                              "--model_path=student", "--launcher=python", "--batch-size=4"])
    assert [p.epochs for p in plans] == [17, 17]      # ceil(50 x 0.33)
    assert "--load-pretrained=../GLM/data/student " in commands[0]
    assert "--load-pretrained=/abs/cb-student " in commands[1] and "--save=/abs/cb-student/finetune/CB " in commands[1]
    assert commands[0].startswith("CUDA_VISIBLE_DEVICES=0 python finetune.py --finetune")
    assert "--batch-size=4 --epochs=17" in commands[0]
    assert [p.epochs for p in render(["--tasks=rte", "--epochs=4", "--rate_arg_epochs=0.5"])[0]] == [2]
    assert [p.epochs for p in render(["--tasks=copa", "--epoch_type=XXLARGE_EPOCH"])[0]] == [100]
    _, torchrun = render(["--tasks=rte", "--launcher=torchrun", "--gpus=2,3", "--del_fp16"])
    assert torchrun[0].startswith("CUDA_VISIBLE_DEVICES=2,3 torchrun --nproc_per_node=2 --master_port=12345 "
                                  "finetune.py")
    assert " --fp16" not in torchrun[0]


def test_unchanged_deepspeed_config_is_the_template_file():
    plans, commands = render(["--tasks=rte"])
    assert plans[0].ds_config is None and plans[0].ds_config_path.endswith("config/config_blocklm_tiny6.json")
    plans, _ = render(["--tasks=rte", "--del_fp16"])
    assert plans[0].ds_config["fp16"]["enabled"] is False and "zero_optimization" not in plans[0].ds_config


@pytest.mark.parametrize("argv, message", [
    (["--tasks=rte,copa", "--ds_train_micro_batch_size_per_gpu=8;8;8"], "3 ';'-separated values for 2 tasks"),
    (["--tasks=rte", "--ds_optimizer__params__lrr=1e-5"], "no key 'lrr' at optimizer.params"),
    (["--tasks=rte", "--ds_train_micro_batch_size_per_gpu=2.5"], "expected an integer"),
    (["--tasks=rte", "--ds_train_micro_batch_size_per_gpu=10", "--rate_ds_train_micro_batch_size_per_gpu=0.25"],
     "10 x 0.25 = 2.5 for task rte: not an integer"),
    (["--tasks=rte,qa"], "unknown task qa"),
    (["--tasks=rte", "--task_t_load=bass"], "--task_t_load=bass: no such teacher set"),
    (["--tasks=sst2", "--task_t_load=base"], "teacher set 'base' has no checkpoint for task 'sst2'"),
    (["--tasks=rte", "--again_2__distill_ft_soft"], "numbered 1, 2, ... without gaps"),
    (["--tasks=rte", "--save=/elsewhere"], "--save is set by auto_tune"),
    (["--tasks=rte", "--distill_temprature=3"], "no flag --distill_temprature (did you mean --distill_temperature"),
    (["--tasks=rte", "--epochs=many"], "--epochs=many: the number of epochs must be an integer"),
    (["--tasks=rte", "--seq-length=long"],
     "finetune.py rejects the command: finetune.py: error: argument --seq-length: invalid int value: 'long'"),
    (["--tasks=rte", "--model=block_tiny5"], "--model=block_tiny5: unknown template"),
    (["--tasks=rte", "--launcher=python", "--gpus=0,1"], "--launcher=python runs one process"),
    (["--tasks=rte", "--parallel_gpus=0,1;1,2"], "GPU 1 is in two sets"),
    (["--tasks=rte", "--copa_model_path=x"], "--copa_model_path: task copa is not in --tasks"),
])
def test_bad_input_names_the_culprit_and_runs_nothing(argv, message, capsys, tmp_path):
    code = main([*argv, *ROOTS, f"--output_dir={tmp_path / 'out'}", "--test"])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_data_root_says_where_to_set_it(capsys, monkeypatch):
    monkeypatch.delenv("GLMKD_DATA_ROOT", raising=False)
    assert main(["--tasks=rte", "--test"]) == 2
    assert "--data_root=DIR (or set $GLMKD_DATA_ROOT)" in capsys.readouterr().err
    monkeypatch.setenv("GLMKD_DATA_ROOT", "/data/superglue")
    assert main(["--tasks=rte", "--test"]) == 0
    assert "--data-dir=/data/superglue/RTE " in capsys.readouterr().out


def test_task_presets_agree_with_the_task_registry():
    from tasks.registry import TASKS as REGISTRY
    from tuning.templates import TASKS
    for key, task in TASKS.items():
        spec = REGISTRY[key]
        assert spec.directory == task.data_dir or (key == "wsc" and task.data_dir == "WSC-negative"), key
        assert task.pattern_id in (None, spec.default_pattern_id), key
        assert (spec.pvp is not None) == task.cloze_eval, key


# --------------------------------------------------------------------------- the original's logs
STAMPED = re.compile(r"\d{6}_\d{6}\.\d{6}")
LOG_SWEEPS = {   # log file -> the auto_tune flags that produced it (read off its commands)
    "GLMD_110M-66M.json": ["--gpus=4,5,6,7",
                           "--model_path=checkpoints/distill/paper/12.768-6.768_64-15w_glmd-dta_vc.5de",
                           "--task_t_load=base", "--student_model=logitsdistil", "--distill_temperature=15",
                           "--map_vocab_size=0.5", "--distill_logit_mask_map", "--unmap_vocab_output",
                           "--logitsdistil_mask_pad", "--del_checkpoint_activations", "--again_1__distill_ft_soft",
                           "--again_1__distill_temperature=1", "--again_1__logitsdistil_wo_inter", "--seed=1234",
                           "--ds_gradient_accumulation_steps=2"],
    "RL-KD_340M+110M-66M.json": ["--gpus=6", "--task_t_load=base_large", "--save_sub=ft_rlkd", "--student_model=kd",
                                 "--distill_ft_soft", "--distill_temperature=10", "--student_truncate_tn=0",
                                 "--multi_teacher_model=rl_kd", "--rl_kd_only_avg", "--rl_kd_alpha=0.5",
                                 "--rl_kd_semantic_model_dim=768", "--seed=1234",
                                 "--again_1__task_t_load=base_base_large",
                                 "--again_1__rl_kd_only_avg", "--again_1__student_truncate_tn=0",
                                 "--again_1__rl_kd_reward=1", "--again_1__rl_kd_semantic_model=0",
                                 "--again_1__mt_has_loss"],
    "16_1e-5_110M-66M/TinyBERT.json": ["--gpus=4,5",
                                       "--model_path=checkpoints/distill/paper/12.768-6.768_64-15w_tinybert",
                                       "--task_t_load=base", "--student_model=tinybert", "--seed=1234",
                                       "--again_1__distill_ft_soft", "--again_1__tinybert_wo_inter",
                                       "--ds_gradient_accumulation_steps=2"],
    "16_1e-5_110M-66M/Annealing-KD.json": ["--gpus=1", "--model_path=checkpoints/distill/paper/6.768_64-15w_pd",
                                           "--task_t_load=base", "--student_model=annealing_kd",
                                           "--annealing_kd_max_t=7", "--distill_ft_soft", "--distill_ft_soft_mse",
                                           "--seed=1234", "--again_1__distill_ft_soft", "--again_1__distill_ft_hard"],
    "DGKD_340M+200M-110M.json": ["--gpus=6,3", "--task_t_load=tune_takd_200m_large", "--num-layers=12",
                                 "--save_sub=ft_dgkd", "--student_model=kd", "--student_truncate_tn=0",
                                 "--multi_teacher_model=avg", "--avgmt_sum_loss", "--avgmt_teacher_survival_p=0.75",
                                 "--distill_ft_soft", "--distill_soft_rate=0.5", "--distill_hard_rate=0.5",
                                 "--distill_temperature=10", "--seed=1234"],
    "TAKD_340M-200M.json": ["--gpus=6", "--task_t_load=large", "--num-layers=18", "--hidden-size=896",
                            "--num-attention-heads=14", "--save_sub=ft_takd", "--student_model=kd",
                            "--student_truncate_tn=0", "--distill_ft_soft", "--distill_ft_soft_kl", "--distill_ft_hard",
                            "--distill_temperature=10", "--seed=1234"],
}


def _normalised(command: str):
    """Tokens with the per-run values (port, times, temporary files) blanked."""
    blank = {"--master_port": "PORT", "--deepspeed_config": "JSON", "--custom_tmp_result": "RESULT"}
    tokens = []
    for token in shlex.split(command):
        flag = token.split("=", 1)[0]
        tokens.append(f"{flag}={blank[flag]}" if flag in blank else STAMPED.sub("TIME", token))
    return tokens


@pytest.mark.parametrize("log", sorted(LOG_SWEEPS))
def test_the_original_logs_commands_are_reproduced(log, shared_dir):
    records = json.loads((shared_dir / "data/glmkd/ft_logs" / log).read_text())
    plans, commands = render(["--py_file=distill/finetune.py", "--model=block_tiny6", ALL_TASKS, *LOG_SWEEPS[log]])
    assert len(commands) == len(records)
    for plan, command, record in zip(plans, commands, records):
        assert _normalised(command) == _normalised(record["*cmd"]), (log, plan.task.key, plan.stage)


def test_the_originals_path_runs_the_same_entry_point(tmp_path):
    done = subprocess.run([sys.executable, str(REPO_ROOT / "distill/auto_tune.py"), "--tasks=rte", "--data_root=data",
                           "--launcher=python", "--test"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].startswith("CUDA_VISIBLE_DEVICES=0 python finetune.py --finetune --cloze-eval")
