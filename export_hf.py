"""Export the Hugging Face student of a run's checkpoint as a model folder.

    python export_hf.py CHECKPOINT OUT_DIR [--tokenizer DIR] [--force]

CHECKPOINT is a run folder (or any folder with latest_checkpointed_iteration.txt) of a run
with --hf_model / --hf_student_layers. OUT_DIR receives config.json, model.safetensors and the
tokenizer (the files of the folder the run recorded, or of --tokenizer; a GGUF file's tokenizer
is written with save_pretrained), loadable with `AutoModelForCausalLM` /
`AutoModelForMaskedLM.from_pretrained(OUT_DIR)`. Nothing is written on error, and an existing
non-empty OUT_DIR is only replaced with --force.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

from model.checkpoint import CheckpointError


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="run folder with latest_checkpointed_iteration.txt")
    parser.add_argument("out_dir", help="the model folder to write")
    parser.add_argument("--tokenizer", help="folder to copy the tokenizer files from, or a .gguf file to read the "
                                            "tokenizer from (default: the run's)")
    parser.add_argument("--force", action="store_true", help="replace an existing non-empty OUT_DIR")
    args = parser.parse_args(argv)
    from model.hf_init import export_student
    from training.hf_models import gguf_file, load_tokenizer, student_from_checkpoint
    try:
        model, recorded = student_from_checkpoint(args.checkpoint)
        tokenizer = args.tokenizer or recorded
        source = {"tokenizer_dir": tokenizer}
        if tokenizer is not None and gguf_file(tokenizer) is not None:      # no files to copy: save it
            source = {"tokenizer": load_tokenizer(tokenizer, "the tokenizer")}
        elif tokenizer is not None and not Path(tokenizer).is_dir():
            raise FileNotFoundError(f"the tokenizer folder {tokenizer} is gone: pass --tokenizer DIR")
        export_student(model, args.out_dir, overwrite=args.force, **source)
    except FileExistsError as error:
        print(f"export_hf.py: error: {error}".replace("pass overwrite=True", "pass --force"), file=sys.stderr)
        return 1
    except (CheckpointError, ValueError, FileNotFoundError) as error:
        print(f"export_hf.py: error: {error}", file=sys.stderr)
        return 1
    print(f"exported {args.checkpoint} to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
