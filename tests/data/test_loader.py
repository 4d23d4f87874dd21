"""Prompt loading: schema errors name file/row/field, routing, chat template, over-long prompts, SFT pairs."""
import json
from pathlib import Path

import pytest

from prime_megatron.data.loader import load_prompt_dataset, load_prompt_records, load_tokenizer, tokenize_prompts
from prime_megatron.data.schema import DataFormatError, parse_record, route_verifier
from prime_megatron.data.sft import load_sft_examples

TINY = Path(__file__).resolve().parents[2] / "examples" / "tiny"


def _row(content="Compute 1+2.", ability="math", source="arithmetic", truth="3"):
    return {"data_source": source, "prompt": [{"role": "user", "content": content}], "ability": ability,
            "reward_model": {"ground_truth": truth, "style": "rule"}, "extra_info": {"index": 0}}


def _jsonl(tmp_path, rows, name="d.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TINY)


@pytest.mark.parametrize("ability,source,kind", [
    ("math", "numina_olympiads", "math"), ("code", "taco", "code"), ("", "codecontests", "code"),
    (None, "numina_cn_k12", "math"), ("coding", "", "code"), ("chat", "sharegpt", None)])
def test_route_verifier(ability, source, kind):
    assert route_verifier(ability, source) == kind


@pytest.mark.parametrize("mutate,field", [
    (lambda r: r["reward_model"].pop("ground_truth"), "reward_model.ground_truth"),
    (lambda r: r.update(prompt="Compute 1+2."), "prompt"),
    (lambda r: r.update(prompt=[{"role": "user"}]), "prompt"),
    (lambda r: r.update(prompt=[{"role": "assistant", "content": "hi"}]), "prompt"),
    (lambda r: r.update(ability="chat", data_source="web"), "ability"),
    (lambda r: r.update(ability="code", reward_model={"ground_truth": "{not json"}), "reward_model.ground_truth"),
    (lambda r: r.update(extra_info=[1]), "extra_info"),
])
def test_malformed_record_names_file_row_and_field(tmp_path, mutate, field):
    bad = _row()
    mutate(bad)
    path = _jsonl(tmp_path, [_row(), _row(), bad])
    with pytest.raises(DataFormatError) as err:
        load_prompt_records([path])
    assert (err.value.file, err.value.row, err.value.field) == (str(path), 2, field)
    assert f"{path}: row 2: field '{field}'" in str(err.value)


def test_jsonl_syntax_error_names_row(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(_row()) + "\n{\"prompt\": [\n")
    with pytest.raises(DataFormatError, match=r"d\.jsonl: row 1: field '<record>': invalid JSON"):
        load_prompt_records([path])


def test_parquet_and_jsonl_give_the_same_records(tmp_path):
    import datasets

    rows = [_row(), _row("Compute 5-7.", truth="-2"), _row(ability="code", source="taco", truth='{"inputs": ["1"], "outputs": ["2"]}')]
    jsonl = _jsonl(tmp_path, rows)
    parquet = tmp_path / "d.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    from_jsonl, from_parquet = load_prompt_records([jsonl]), load_prompt_records([parquet])
    strip = lambda recs: [(r.messages, r.kind, r.ground_truth, r.row) for r in recs]
    assert strip(from_jsonl) == strip(from_parquet)
    assert [r.kind for r in from_jsonl] == ["math", "math", "code"]
    assert from_jsonl[2].ground_truth == {"inputs": ["1"], "outputs": ["2"]}  # code tests arrive parsed


def test_malformed_parquet_row_is_named(tmp_path):
    import datasets

    rows = [_row(), _row(truth="")]
    path = tmp_path / "d.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    with pytest.raises(DataFormatError, match=r"d\.parquet: row 1: field 'reward_model\.ground_truth'"):
        load_prompt_records([path])


def test_chat_template_applied_with_generation_prompt(tokenizer):
    record = parse_record(_row("Compute 12+5."), file="f", row=0)
    dataset = tokenize_prompts([record], tokenizer, max_prompt_len=64)
    # ChatML written out by hand: the user turn, then the opened assistant turn.
    expected = "<|im_start|>user\nCompute 12+5.<|im_end|>\n<|im_start|>assistant\n"
    assert list(dataset[0].prompt_ids) == tokenizer(expected, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(dataset[0].prompt_ids) == expected


def test_over_long_prompts_are_skipped_and_counted_never_truncated(tmp_path, tokenizer):
    # Under the template: 3 tokens (<|im_start|> user \n) + "Compute" + " " + one per digit/op + "." + 5 closing
    # tokens (<|im_end|> \n <|im_start|> assistant \n) = 11 + expression tokens.
    short, long = "Compute 1+2.", "Compute 11+22+33+44."  # 3 and 11 expression tokens -> 14 and 22 in all
    path = _jsonl(tmp_path, [_row(short), _row(long), _row(short)])
    dataset = load_prompt_dataset([path], tokenizer, max_prompt_len=20)
    assert (len(dataset), dataset.skipped_too_long, dataset.num_records) == (2, 1, 3)
    assert [len(p.prompt_ids) for p in dataset.prompts] == [14, 14]
    assert len(load_prompt_dataset([path], tokenizer, max_prompt_len=22)) == 3
    with pytest.raises(ValueError, match="none of the 3 prompts"):
        load_prompt_dataset([path], tokenizer, max_prompt_len=8)


def test_sft_pairs_end_with_eos(tmp_path, tokenizer):
    path = _jsonl(tmp_path, [{"prompt": [{"role": "user", "content": "Compute 1+2."}], "response": "1+2=3\n\\boxed{3}"},
                             {"prompt": [{"role": "user", "content": "Compute 1+2+3."}], "response": "x" * 90}])
    examples, skipped = load_sft_examples([path], tokenizer, max_len=64)
    assert skipped == 1 and len(examples) == 1
    assert examples[0].response_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(examples[0].response_ids) == "1+2=3\n\\boxed{3}<|im_end|>"
    bad = _jsonl(tmp_path, [{"prompt": [{"role": "user", "content": "q"}]}], name="bad.jsonl")
    with pytest.raises(DataFormatError, match=r"bad\.jsonl: row 0: field 'response'"):
        load_sft_examples([bad], tokenizer, max_len=64)
