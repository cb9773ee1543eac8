"""Reshard a checkpoint to another model-parallel (MP) size.

    python change_mp.py CHECKPOINT_DIR TARGET_MP [--force]

Reads the tracker (latest_checkpointed_iteration.txt) and the shards
(<tag>/mp_rank_XX_model_states.pt) and writes CHECKPOINT_DIR_MP<TARGET_MP> with the same
layout, every tensor merged and split by the partition specs the checkpoint records
(the logic is `model.checkpoint.change_mp`). Optimizer states are not carried over.
Nothing is written on error, and an existing output folder is only replaced with --force.
"""
import argparse
import sys
from typing import List, Optional

from model.checkpoint import CheckpointError, change_mp


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint_dir", help="folder with latest_checkpointed_iteration.txt and <tag>/mp_rank_XX_*")
    parser.add_argument("target_mp", type=int, help="the model parallel size to reshard to")
    parser.add_argument("--force", action="store_true", help="replace an existing CHECKPOINT_DIR_MP<target>")
    args = parser.parse_args(argv)
    try:
        change_mp(args.checkpoint_dir, args.target_mp, overwrite=args.force)
    except (CheckpointError, ValueError, FileExistsError) as error:
        print(f"change_mp.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
