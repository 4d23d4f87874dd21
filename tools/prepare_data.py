"""Validate a prompt dataset in the Eurus-2-RL-Data schema and optionally convert it.

    python tools/prepare_data.py INPUT [INPUT ...] [--output OUT.parquet|OUT.jsonl]
                                 [--tokenizer DIR --max-prompt-len N] [--prompt-key prompt]

Every row is validated (the first malformed row stops with file, row and field).
It prints the count per ability and per verifier; with --tokenizer, it also counts
prompts over --max-prompt-len tokens under the chat template (the trainer skips them).
--output writes the rows unchanged as parquet or jsonl (by suffix).
"""
import argparse
import sys
from collections import Counter

from prime_megatron.data.loader import load_tokenizer, read_raw_rows, tokenize_prompts
from prime_megatron.data.schema import DataFormatError, parse_record


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="parquet or jsonl files")
    parser.add_argument("--output", help="write all rows to this .parquet or .jsonl file")
    parser.add_argument("--tokenizer", help="HF tokenizer dir, to count over-long prompts")
    parser.add_argument("--max-prompt-len", type=int, default=1024)
    parser.add_argument("--prompt-key", default="prompt")
    return parser.parse_args()


def main() -> int:
    args = _parse_args()
    rows, records = [], []
    try:
        for path in args.inputs:
            for row, raw in enumerate(read_raw_rows(path)):
                records.append(parse_record(raw, file=path, row=row, prompt_key=args.prompt_key))
                rows.append(raw)
    except DataFormatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{len(records)} valid rows in {len(args.inputs)} file(s)")
    for name, counts in (("ability", Counter(r.ability for r in records)), ("verifier", Counter(r.kind for r in records))):
        print(f"  by {name}: " + ", ".join(f"{k or '<empty>'}={v}" for k, v in sorted(counts.items())))
    if args.tokenizer:
        dataset = tokenize_prompts(records, load_tokenizer(args.tokenizer), max_prompt_len=args.max_prompt_len)
        print(f"  over {args.max_prompt_len} tokens (skipped by the trainer): {dataset.skipped_too_long}")
    if args.output:
        _write(rows, args.output)
        print(f"wrote {len(rows)} rows to {args.output}")
    return 0


def _write(rows: list[dict], path: str) -> None:
    import datasets

    table = datasets.Dataset.from_list(rows)
    if path.endswith(".parquet"):
        table.to_parquet(path)
    elif path.endswith(".jsonl"):
        table.to_json(path, lines=True, force_ascii=False)
    else:
        raise SystemExit(f"error: --output must end in .parquet or .jsonl, got {path}")


if __name__ == "__main__":
    sys.exit(main())
