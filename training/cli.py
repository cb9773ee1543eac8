"""The shared main() of pretrain.py and finetune.py: parse, run, report errors clearly."""
import os
import sys
import traceback
import warnings
from typing import Optional, Sequence

from model.checkpoint import CheckpointError

from .config import ConfigError


def main(stage: str, prog: str, argv: Optional[Sequence[str]] = None) -> int:
    from .arguments import parse_run_config
    warnings.simplefilter("once", UserWarning)
    try:
        config = parse_run_config(argv, stage, prog)
    except ConfigError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    from .engine import shutdown_distributed
    from .run import run
    from .trainer import NonFiniteLossError
    try:
        run(config)
    except (ConfigError, CheckpointError, NonFiniteLossError, OSError, ValueError, KeyError) as error:
        if "--debug-traceback" in (argv or sys.argv):
            traceback.print_exc()
        # Another rank's progress bar may hold the terminal's current line: start a new one.
        fresh_line = "\n" if os.environ.get("RANK", "0") != "0" else ""
        print(f"{fresh_line}{prog}: error: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        shutdown_distributed()
    return 0
