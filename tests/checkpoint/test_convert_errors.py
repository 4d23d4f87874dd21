"""Bad inputs to the converters: clear messages naming file and tensor, output left untouched."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from prime_megatron.checkpoint import convert
from prime_megatron.checkpoint.convert import convert_hf_to_megatron, convert_megatron_to_hf

CONFIG = dict(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A sharded HF Qwen2 dir, a single-file copy, and its megatron conversion."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    root = tmp_path_factory.mktemp("errors")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**CONFIG))
    model.save_pretrained(root / "sharded", max_shard_size="40KB")
    model.save_pretrained(root / "single", max_shard_size="1GB")
    convert_hf_to_megatron(root / "single", root / "meg", tp=2, pp=1, progress=False)
    return root


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _assert_no_leftovers(out):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith((f".{out.name}.", f"{out.name}."))]


def test_missing_config_names_the_file(tmp_path):
    (tmp_path / "hf").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert_hf_to_megatron(tmp_path / "hf", tmp_path / "out", progress=False)
    _assert_no_leftovers(tmp_path / "out")


def test_unsupported_architecture_is_named(sources, tmp_path):
    hf = _copy(sources / "single", tmp_path / "hf")
    cfg = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps(cfg | {"architectures": ["MixtralForCausalLM"]}))
    with pytest.raises(ValueError, match="MixtralForCausalLM"):
        convert_hf_to_megatron(hf, tmp_path / "out", progress=False)
    _assert_no_leftovers(tmp_path / "out")


def test_missing_shard_names_the_shard(sources, tmp_path):
    hf = _copy(sources / "sharded", tmp_path / "hf")
    victim = sorted(hf.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        convert_hf_to_megatron(hf, tmp_path / "out", progress=False)
    _assert_no_leftovers(tmp_path / "out")


def test_missing_tensor_is_named(sources, tmp_path):
    hf = _copy(sources / "single", tmp_path / "hf")
    tensors = load_file(hf / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, hf / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(KeyError, match="model.layers.1.mlp.up_proj.weight"):
        convert_hf_to_megatron(hf, tmp_path / "out", progress=False)
    _assert_no_leftovers(tmp_path / "out")


def test_shape_mismatch_names_file_tensor_and_shapes(sources, tmp_path):
    hf = _copy(sources / "sharded", tmp_path / "hf")
    cfg = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps(cfg | {"intermediate_size": 64}))
    with pytest.raises(ValueError, match=r"model-\d+-of-\d+\.safetensors: tensor 'model.layers.0.mlp.gate_proj.weight' "
                                         r"has shape \(48, 32\), expected \(64, 32\)"):
        convert_hf_to_megatron(hf, tmp_path / "out", progress=False)
    _assert_no_leftovers(tmp_path / "out")


def test_existing_output_is_refused_and_untouched(sources, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="out"):
        convert_hf_to_megatron(sources / "single", out, progress=False)
    with pytest.raises(FileExistsError, match="out"):
        convert_megatron_to_hf(sources / "meg", out, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_failure_mid_conversion_leaves_no_output(sources, tmp_path, monkeypatch):
    real, calls = convert.hm.hf_to_megatron, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(convert.hm, "hf_to_megatron", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        convert_hf_to_megatron(sources / "single", tmp_path / "meg", progress=False)
    _assert_no_leftovers(tmp_path / "meg")
    monkeypatch.undo()
    from megatron.core import dist_checkpointing

    monkeypatch.setattr(dist_checkpointing, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("quota exceeded")))
    with pytest.raises(OSError, match="quota exceeded"):
        convert_hf_to_megatron(sources / "single", tmp_path / "meg", progress=False)
    _assert_no_leftovers(tmp_path / "meg")
    monkeypatch.setattr(convert.hm, "megatron_to_hf", lambda *a: (_ for _ in ()).throw(RuntimeError("interrupted")))
    with pytest.raises(RuntimeError, match="interrupted"):
        convert_megatron_to_hf(sources / "meg", tmp_path / "hf", progress=False)
    _assert_no_leftovers(tmp_path / "hf")


def test_megatron_side_errors(sources, tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        convert_megatron_to_hf(sources / "single", tmp_path / "a", progress=False)
    bare = _copy(sources / "meg", tmp_path / "bare")
    shutil.rmtree(bare / "hf_config")
    with pytest.raises(FileNotFoundError, match="--hf-config-dir"):
        convert_megatron_to_hf(bare, tmp_path / "b", progress=False)
    other = _copy(sources / "single", tmp_path / "other_cfg")
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(cfg | {"num_hidden_layers": 3}))
    with pytest.raises(ValueError, match=r"'decoder.layers.self_attention.linear_qkv.layer_norm_weight' has shape \(2, 32\), "
                                         r"expected \(3, 32\)"):
        convert_megatron_to_hf(sources / "meg", tmp_path / "c", hf_config_dir=other, progress=False)
    with pytest.raises(KeyError, match="'policy.embedding.word_embeddings.weight'"):
        convert_megatron_to_hf(sources / "meg", tmp_path / "d", key_prefix="policy.", progress=False)
    for name in "abcd":
        _assert_no_leftovers(tmp_path / name)


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    from tests.checkpoint.test_convert import _tool

    with pytest.raises(SystemExit, match=r"error: HF checkpoint directory .*nope does not exist"):
        _tool("convert_hf_to_megatron").main(["--hf-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="error: .*metadata.json"):
        _tool("convert_megatron_to_hf").main(["--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
