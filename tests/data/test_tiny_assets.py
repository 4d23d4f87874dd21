"""The committed tiny assets equal a fresh generation, are correct, and load as a Qwen2 model + tokenizer."""
import json
import re
from pathlib import Path

import pytest

from prime_megatron.data.tiny_assets import EOS_TOKEN, generate_splits, render_assets

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny"
EXPR = re.compile(r"^Compute (\d+[+-]\d+)\.$")


def _read_jsonl(name):
    return [json.loads(line) for line in (TINY / name).read_text().splitlines()]


def _expr(row) -> str:
    match = EXPR.match(row["prompt"][-1]["content"])
    assert match, row
    return match.group(1)


def _evaluate(expr: str) -> int:
    """Independent left-to-right evaluation of an expression of integers joined by + and -."""
    tokens = re.findall(r"^-?\d+|[+-]|\d+", expr)  # a partial result may start negative
    total = int(tokens[0])
    for op, num in zip(tokens[1::2], tokens[2::2]):
        total = total + int(num) if op == "+" else total - int(num)
    return total


def test_committed_files_equal_a_fresh_generation():
    fresh = render_assets(seed=0)
    committed = {p.name: p.read_text() for p in TINY.iterdir() if p.is_file()}
    assert sorted(committed) == sorted(fresh)
    for name, text in fresh.items():
        assert committed[name] == text, f"examples/tiny/{name} differs: run tools/make_tiny_assets.py"
    assert sum(len(t.encode()) for t in fresh.values()) < 2 * 1024 * 1024


def test_generation_depends_on_the_seed():
    small = {"val": 5, "train": 5}
    assert generate_splits(1, small) == generate_splits(1, small) != generate_splits(2, small)
    with pytest.raises(ValueError, match="8000 distinct problems requested"):
        generate_splits(0, {"train": 8000})


def test_ground_truths_and_worked_solutions_are_correct_and_splits_disjoint():
    exprs = {}
    for split in ("val", "train"):
        rows = _read_jsonl(f"{split}.jsonl")
        for row in rows:
            assert row["reward_model"]["ground_truth"] == str(_evaluate(_expr(row)))
            assert _evaluate(_expr(row)) >= 0  # subtraction is posed with the larger number first
            assert row["ability"] == "math"
        exprs[split] = [_expr(r) for r in rows]
    sft = _read_jsonl("sft.jsonl")
    for row in sft:
        *steps, boxed = row["response"].split("\n")
        assert len(steps) == 2  # the units column, then the tens column
        for step in steps:  # every column line ("7+8=15", "12-8=4", "5-3-1=1") is itself right
            lhs, rhs = step.split("=")
            assert _evaluate(lhs) == int(rhs), step
        assert boxed == f"\\boxed{{{_evaluate(_expr(row))}}}"
    exprs["sft"] = [_expr(r) for r in sft]
    assert (len(exprs["val"]), len(exprs["train"]), len(exprs["sft"])) == (200, 3000, 2000)
    all_exprs = exprs["val"] + exprs["train"] + exprs["sft"]
    assert len(set(all_exprs)) == len(all_exprs)  # held-out val shares no problem with train or SFT


def test_tokenizer_and_config_load_as_qwen2():
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from prime_megatron.models.arch import load_arch

    tok = AutoTokenizer.from_pretrained(str(TINY))
    raw = Tokenizer.from_file(str(TINY / "tokenizer.json"))
    arch = load_arch(str(TINY))
    config = json.loads((TINY / "config.json").read_text())
    assert arch.family == "qwen2" and arch.vocab_size == len(tok) == raw.get_vocab_size() == config["vocab_size"]
    assert tok.eos_token == EOS_TOKEN and tok.eos_token_id == config["eos_token_id"]
    # AutoTokenizer rebuilds a Qwen2Tokenizer for a qwen2 config; it must agree with tokenizer.json itself.
    for row in _read_jsonl("sft.jsonl")[:50]:
        text = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True) + row["response"]
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == raw.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == text


def test_answers_grade_with_the_math_verifier():
    math = pytest.importorskip("prime_megatron.reward.math", reason="the math verifier has not landed yet")
    for row in _read_jsonl("sft.jsonl")[:20]:
        truth = str(_evaluate(_expr(row)))
        assert math.grade_math(row["response"], truth) == 1.0
        assert math.grade_math(row["response"], str(int(truth) + 1)) == 0.0
