"""The distillation methods, one file each (its options, its class, its private losses);
importing this package registers them in `distill.STUDENT_MODELS`. A new method is a new
file here plus its line below."""
from . import alp_kd  # noqa: F401
from . import annealing_kd  # noqa: F401
from . import ckd  # noqa: F401
from . import continuation_kd  # noqa: F401
from . import diito  # noqa: F401
from . import distilbert  # noqa: F401
from . import logitsdistil  # noqa: F401
from . import lrc_bert  # noqa: F401
from . import mgskd  # noqa: F401
from . import minilm  # noqa: F401
from . import minilmv2  # noqa: F401
from . import mixbaseline  # noqa: F401
from . import mobilebert  # noqa: F401
from . import pkd  # noqa: F401
from . import rail_kd  # noqa: F401
from . import sid  # noqa: F401
from . import theseus  # noqa: F401
from . import tinybert  # noqa: F401
from . import universal_kd  # noqa: F401
