"""The tiny CPU example's assets: an arithmetic task, a byte-level BPE tokenizer, a Qwen2 config.

The task is two-digit addition and subtraction (``Compute 47+38.``, ``Compute 52-38.``,
never a negative result), answered by column arithmetic: a units line, a tens line
with the carry or borrow, then ``\\boxed{answer}``, which the real math verifier
grades. Every line is a one-digit fact that held-out problems share with the
training problems, so a sub-million-parameter model can generalise; getting the
carry/borrow, the copied digits and the assembled answer all right is what a short
supervised warm-up leaves imperfect and RL can improve. The steps also give the
implicit PRM something to credit token by token.

Splits are disjoint by expression: ``val`` (held out), ``train`` (RL prompts) and
``sft`` (warm-up pairs). Everything is a pure function of the seed and the files
are written byte-for-byte reproducibly, so a test can regenerate and compare.

Deliberately left out: model weights (``prime-megatron sft`` creates them from
``config.json``) and any natural-language variety in the prompts.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

DATA_SOURCE = "arithmetic"
SPLIT_SIZES = {"val": 200, "train": 3000, "sft": 2000}
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Whole-word tokens, built by BPE merges, for words every prompt or response carries.
MERGED_WORDS = ("system", "user", "assistant", "Compute", "\\boxed")
# Qwen2's pre-tokenizer split (digits one by one), so that transformers' Qwen2Tokenizer, which
# AutoTokenizer picks for a qwen2 config.json, rebuilds exactly this tokenizer.
QWEN2_SPLIT_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                     r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
EOS_TOKEN, PAD_TOKEN = "<|im_end|>", "<|endoftext|>"
# ChatML, as Qwen2 models use; the generation prompt opens the assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def compute_problem(rng: random.Random) -> tuple[int, str, int]:
    """One random problem ``(a, op, b)``: ``a+b`` or ``a-b`` with ``0 <= b <= a`` for ``-``, all < 100."""
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    op = rng.choice("+-")
    if op == "-" and b > a:
        a, b = b, a
    return a, op, b


def compute_worked_solution(a: int, op: str, b: int) -> tuple[str, int]:
    """Column arithmetic: the units line, the tens line (with carry or borrow), then ``\\boxed{}``.

    ``47+38``: ``7+8=15`` / ``4+3+1=8`` / ``\\boxed{85}``;  ``52-38``: ``12-8=4`` / ``5-3-1=1`` /
    ``\\boxed{14}`` (the ``1`` before the units digit marks the borrow). The answer is the tens
    result followed by the units digit, without a leading zero.
    """
    (a1, a0), (b1, b0) = divmod(a, 10), divmod(b, 10)
    if op == "+":
        units = a0 + b0
        carry = units // 10
        tens = a1 + b1 + carry
        lines = [f"{a0}+{b0}={units}", f"{a1}+{b1}" + ("+1" if carry else "") + f"={tens}"]
        digit = units % 10
    else:
        borrow = int(a0 < b0)
        units = a0 + 10 * borrow - b0
        tens = a1 - b1 - borrow
        lines = [f"{'1' if borrow else ''}{a0}-{b0}={units}", f"{a1}-{b1}" + ("-1" if borrow else "") + f"={tens}"]
        digit = units
    answer = int(f"{tens}{digit}")
    lines.append(f"\\boxed{{{answer}}}")
    return "\n".join(lines), answer


def _prompt_messages(expr: str) -> list[dict]:
    return [{"role": "user", "content": f"Compute {expr}."}]


def generate_splits(seed: int = 0, sizes: dict[str, int] = SPLIT_SIZES) -> dict[str, list[dict]]:
    """Rows for each split; no expression appears in two splits (or twice in one)."""
    distinct = 100 * 100 + 100 * 101 // 2  # a+b, and a-b with b <= a
    if sum(sizes.values()) > distinct // 2:  # keep rejection sampling fast and the splits varied
        raise ValueError(f"{sum(sizes.values())} distinct problems requested; only {distinct} exist")
    rng, seen = random.Random(seed), set()
    splits: dict[str, list[dict]] = {}
    for split, size in sizes.items():
        rows = []
        while len(rows) < size:
            a, op, b = compute_problem(rng)
            expr = f"{a}{op}{b}"
            if expr in seen:
                continue
            seen.add(expr)
            response, answer = compute_worked_solution(a, op, b)
            rows.append(_make_row(split, len(rows), expr, response, answer))
        splits[split] = rows
    return splits


def _make_row(split: str, index: int, expr: str, response: str, answer: int) -> dict:
    if split == "sft":
        return {"prompt": _prompt_messages(expr), "response": response}
    return {"data_source": DATA_SOURCE, "prompt": _prompt_messages(expr), "ability": "math",
            "reward_model": {"ground_truth": str(answer), "style": "rule"},
            "extra_info": {"split": split, "index": index}}


def _byte_symbol(b: int) -> str:
    """GPT-2 byte-level symbol of byte ``b``: printable ASCII is itself, 0..32 map to 256 + b."""
    return chr(b) if 33 <= b <= 126 else chr(256 + b)


def compute_merges(words=MERGED_WORDS) -> list[tuple[str, str]]:
    """Left-to-right merge chains (``C o``, ``Co m``, ...) making each word one token."""
    merges = []
    for word in words:
        symbols = [_byte_symbol(b) for b in word.encode()]
        for i in range(1, len(symbols)):
            merges.append(("".join(symbols[:i]), symbols[i]))
    return merges


def build_tokenizer():
    """A Qwen2-style byte-level BPE over printable ASCII, tab and newline (about 120 tokens)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    symbols = [_byte_symbol(b) for b in (9, 10, 32, *range(33, 127))]
    merges = compute_merges()
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *symbols, *(a + b for a, b in merges)):
        vocab.setdefault(token, len(vocab))
    # Bytes outside the alphabet (non-ASCII) have no symbol and are dropped, as the tiny task never
    # produces them; a general tokenizer would carry all 256.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def tokenizer_config(model_max_length: int) -> dict:
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN, "unk_token": None,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }


def model_config(vocab_size: int, *, eos_id: int, pad_id: int) -> dict:
    """A Qwen2 config.json of about 0.8M parameters (4 layers, hidden 128, GQA 4:2, qkv bias)."""
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "vocab_size": vocab_size, "hidden_size": 128, "intermediate_size": 384,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "hidden_act": "silu", "max_position_embeddings": 256, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "attention_dropout": 0.0,
        "use_sliding_window": False, "initializer_range": 0.02,
        "bos_token_id": None, "eos_token_id": eos_id, "pad_token_id": pad_id, "torch_dtype": "float32",
    }


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def _json(obj: dict) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_assets(seed: int = 0) -> dict[str, str]:
    """File name -> exact file text of every tiny asset."""
    tok = build_tokenizer()
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    config = model_config(vocab_size, eos_id=tok.token_to_id(EOS_TOKEN), pad_id=tok.token_to_id(PAD_TOKEN))
    files = {f"{split}.jsonl": _jsonl(rows) for split, rows in generate_splits(seed).items()}
    files["tokenizer.json"] = tok.to_str(pretty=True) + "\n"
    files["tokenizer_config.json"] = _json(tokenizer_config(config["max_position_embeddings"]))
    files["config.json"] = _json(config)
    return files


def write_assets(out_dir: str | Path, seed: int = 0) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in render_assets(seed).items():
        path = out_dir / name
        path.write_text(text)
        paths.append(path)
    return paths
