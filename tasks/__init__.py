"""Downstream tasks: SuperGLUE and GLUE processors, PET cloze patterns, GLM cloze inputs,
metrics and prediction files.

Typical use::

    task = Task(TaskConfig("rte", data_dir="../shared/data/superglue/RTE"), tokenizer)
    loader = DataLoader(task.dataset("train"), batch_size=16, collate_fn=collate)
"""
from tasks.collate import collate, fit_choices, pad_choices
from tasks.examples import DataFormatError, InputExample
from tasks.registry import DEFAULT_METRICS, TASKS, TaskConfig, TaskSpec, get_task_spec
from tasks.task import Task, TaskDataset

__all__ = ["DEFAULT_METRICS", "TASKS", "DataFormatError", "InputExample", "Task", "TaskConfig",
           "TaskDataset", "TaskSpec", "collate", "fit_choices", "get_task_spec", "pad_choices"]
