"""Knowledge distillation for GLM (GKD): the student wrapper every method subclasses, the
prediction-layer losses, and the multi-teacher combiners. Importing the package registers
every method."""
from .distill_model import (STUDENT_MODELS, DistillBatch, DistillOptions, GLMStudent, StepInfo, TeacherInfo,
                            build_student, register_student)
from .multi_teacher_model import (MULTI_TEACHER_MODELS, AvgTeacher, AvgTeacherOptions, build_multi_teacher,
                                  register_multi_teacher)

__all__ = ["STUDENT_MODELS", "DistillBatch", "DistillOptions", "GLMStudent", "StepInfo", "TeacherInfo",
           "build_student", "register_student", "MULTI_TEACHER_MODELS", "AvgTeacher", "AvgTeacherOptions",
           "build_multi_teacher", "register_multi_teacher"]

# Registration: the combiners and methods register themselves on import.
from . import methods, multi_teacher_rl_kd, multi_teacher_weighted  # noqa: E402,F401

