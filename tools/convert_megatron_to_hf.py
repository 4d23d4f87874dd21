"""Convert a megatron dist_checkpointing checkpoint (converted or trained, any TP/PP) to HF safetensors.

    python tools/convert_megatron_to_hf.py --ckpt DIR --out DIR [--hf-config-dir DIR] [--dtype bf16|fp32]

Writes sharded safetensors, the index file, config.json and the tokenizer files, loadable with
transformers' from_pretrained. All logic lives in prime_megatron.checkpoint.convert.
"""
import argparse
import sys

from prime_megatron.checkpoint.convert import DTYPES, convert_megatron_to_hf


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="dist_checkpointing dir (has metadata.json)")
    parser.add_argument("--out", required=True, help="new HF model dir (must not exist or be empty)")
    parser.add_argument("--hf-config-dir", default=None,
                        help="HF config.json + tokenizer (default: CKPT/hf_config, written by the HF->megatron converter)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: keep the checkpoint dtype")
    parser.add_argument("--max-shard-gb", type=float, default=4.0, help="safetensors shard size (default 4 GB)")
    parser.add_argument("--key-prefix", default="", help='checkpoint key prefix of the model to export, e.g. "policy."')
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        out = convert_megatron_to_hf(args.ckpt, args.out, hf_config_dir=args.hf_config_dir,
                                     dtype=DTYPES.get(args.dtype), max_shard_bytes=int(args.max_shard_gb * 1e9),
                                     key_prefix=args.key_prefix,
                                     progress=not args.no_progress)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as err:  # bad input: message, no traceback
        sys.exit(f"error: {err.args[0] if isinstance(err, KeyError) else err}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
