"""auto_tune: method x task x stage sweeps of finetune.py, and their results tables.

`templates` (models, tasks, presets: data), `arglist` (ordered flags), `teachers` (the
task_t_load registry), `deepspeed` (per-task config patches), `render` (a sweep spec -> the
commands, pure), `runner` (running, retries, ports, resharding), `results` (JSON records ->
tables, --show_tune), `cli` (the command line).
"""
