"""Convert an HF Qwen2/Llama safetensors checkpoint to a megatron dist_checkpointing checkpoint.

    python tools/convert_hf_to_megatron.py --hf-dir DIR --out DIR --tp N --pp M [--dtype bf16|fp32]

The checkpoint is written with the chunks a tp x pp job holds and loads at any TP/PP.
All logic lives in prime_megatron.checkpoint.convert.
"""
import argparse
import sys

from prime_megatron.checkpoint.convert import DTYPES, convert_hf_to_megatron


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf-dir", required=True, help="HF model dir with config.json and *.safetensors")
    parser.add_argument("--out", required=True, help="new megatron checkpoint dir (must not exist or be empty)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel layout to write (default 1)")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel layout to write (default 1)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: keep the HF dtype")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        out = convert_hf_to_megatron(args.hf_dir, args.out, tp=args.tp, pp=args.pp,
                                     dtype=DTYPES.get(args.dtype), progress=not args.no_progress)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as err:  # bad input: message, no traceback
        sys.exit(f"error: {err.args[0] if isinstance(err, KeyError) else err}")
    print(f"wrote {out}")


if __name__ == "__main__":  # the checkpoint writer forks worker processes
    main()
