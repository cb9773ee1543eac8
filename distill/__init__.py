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

# The methods register themselves on import (one module per family while they are being built).
import importlib as _importlib
import pkgutil as _pkgutil

for _module in _pkgutil.iter_modules(__path__):
    if _module.name.startswith("methods_"):
        _importlib.import_module(f"{__name__}.{_module.name}")
