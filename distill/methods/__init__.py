"""The distillation methods, one file each (its options, its class, its private losses);
importing this package registers them in `distill.STUDENT_MODELS`. A new method is a new
file here plus its line below."""

from . import diito  # noqa: F401
from . import lrc_bert  # noqa: F401
from . import mobilebert  # noqa: F401
from . import sid  # noqa: F401
from . import theseus  # noqa: F401
