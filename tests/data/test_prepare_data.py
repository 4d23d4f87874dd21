"""tools/prepare_data.py: jsonl <-> parquet conversion keeps every row; a bad row is reported by file/row/field."""
import importlib.util
import json
import sys
from pathlib import Path


from prime_megatron.data.loader import load_prompt_records

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("prepare_data", ROOT / "tools" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(monkeypatch, *argv) -> int:
    monkeypatch.setattr(sys, "argv", ["prepare_data.py", *map(str, argv)])
    return _tool().main()


def test_round_trip_through_parquet_keeps_records(tmp_path, monkeypatch, capsys):
    src = ROOT / "examples" / "tiny" / "val.jsonl"
    parquet, back = tmp_path / "val.parquet", tmp_path / "val.jsonl"
    assert _run(monkeypatch, src, "--output", parquet) == 0
    assert "by ability: math=200" in capsys.readouterr().out
    assert _run(monkeypatch, parquet, "--output", back) == 0
    key = lambda recs: [(r.messages, r.ground_truth, r.kind, r.extra_info) for r in recs]
    assert key(load_prompt_records([back])) == key(load_prompt_records([src]))


def test_counts_over_long_prompts_with_a_tokenizer(monkeypatch, capsys):
    src = ROOT / "examples" / "tiny" / "val.jsonl"
    assert _run(monkeypatch, src, "--tokenizer", ROOT / "examples" / "tiny", "--max-prompt-len", "100") == 0
    assert "over 100 tokens (skipped by the trainer): 0" in capsys.readouterr().out


def test_bad_row_fails_naming_it(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": [{"role": "user", "content": "q"}], "ability": "math",
                               "reward_model": {"style": "rule"}}) + "\n")
    assert _run(monkeypatch, bad) == 1
    assert f"{bad}: row 0: field 'reward_model.ground_truth': missing" in capsys.readouterr().err
