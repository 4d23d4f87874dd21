"""Write the tiny CPU example's assets (arithmetic data, tokenizer, Qwen2 config) to examples/tiny/.

The files are a pure function of --seed; tests/data/test_tiny_assets.py checks that the
committed files equal a fresh generation. See prime_megatron/data/tiny_assets.py.

    python tools/make_tiny_assets.py [--out examples/tiny] [--seed 0]
"""
import argparse
from pathlib import Path

from prime_megatron.data.tiny_assets import write_assets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "examples" / "tiny"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in write_assets(args.out, seed=args.seed):
        print(f"{path}  {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
