"""diff-export-onnx on tiny checkpoints: the files, model.json, logits against PyTorch, int8, bad input."""

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import make_byte_tokenizer, make_tiny_llama, masked_diffusion_config, save_checkpoint

WEB_EXTRA = "needs the [web] extra: pip install -e '.[web]'"
pytest.importorskip("onnx", reason=WEB_EXTRA)
pytest.importorskip("onnxscript", reason=WEB_EXTRA)  # torch.onnx's dynamo exporter
onnxruntime = pytest.importorskip("onnxruntime", reason=WEB_EXTRA)

from diff_trainer.cli import export_onnx as cli  # noqa: E402
from diff_trainer.sampling.render import TokenPieces  # noqa: E402

for extra in ("onnx", "onnxscript"):  # the `web` extra; a plain `.[test]` install skips this module
    pytest.importorskip(extra)
onnxruntime = pytest.importorskip("onnxruntime")


def tiny_model(kind: str, vocab_size: int, bidirectional: bool = True):
    """A 2-layer llama, qwen2 or gpt2 with hidden size 32."""
    from transformers import AutoModelForCausalLM, GPT2Config, Qwen2Config

    if kind == "llama":
        return make_tiny_llama(vocab_size, bidirectional=bidirectional, max_position_embeddings=64)
    torch.manual_seed(0)
    if kind == "qwen2":
        config = Qwen2Config(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    else:
        config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    config.is_causal = not bidirectional
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return make_byte_tokenizer()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer, tiny_checkpoints):
    """The shared tiny `diffusion` Llama (as "llama") and `causal` one, plus diffusion qwen2 and gpt2 checkpoints."""
    root = tmp_path_factory.mktemp("checkpoints")
    for name, shared in (("llama", "diffusion"), ("causal", "causal")):
        (root / name).symlink_to(tiny_checkpoints / shared)
    for kind in ("qwen2", "gpt2"):
        model = tiny_model(kind, len(tokenizer))
        model.config.diffusion_config = masked_diffusion_config(tokenizer)
        save_checkpoint(root / kind, model, tokenizer)
    return root


def export(checkpoints, name, output, *flags):
    cli.main(["--model", str(checkpoints / name), "--output", str(output), *flags])
    return json.loads((output / "model.json").read_text())


@pytest.fixture(scope="module")
def llama_export(checkpoints, tmp_path_factory):
    output = tmp_path_factory.mktemp("exports") / "llama"
    config = export(
        checkpoints,
        "llama",
        output,
        "--gen_length",
        "24",
        "--block_length",
        "8",
        "--steps",
        "12",
        "--append_dff",
        "--prompt",
        "def len(obj)",
        "--seed",
        "3",
    )
    return output, config


def torch_logits(checkpoint, input_ids, attention_mask):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # the sampler's positions for left padding
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits.numpy()


def onnx_logits(export_dir, input_ids, attention_mask):
    session = onnxruntime.InferenceSession(str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})[0]


def test_model_json_has_what_the_page_needs(llama_export, tokenizer):
    output, config = llama_export
    assert sorted(p.name for p in output.iterdir()) == ["model.json", "model.onnx"]
    assert config["objective"] == "masked_diffusion" and config["max_length"] == 64
    assert config["tokens"] == {
        "vocab_size": len(tokenizer),
        "mask": tokenizer.mask_token_id,
        "eos": 1,
        "pad": 0,
        "bos": None,
        "dff": tokenizer.convert_tokens_to_ids("<DFF>"),
        "forbidden_ids": [0, 2, 384, 385],
        "shift": False,
    }
    assert config["sampler"] == {
        "gen_length": 24,
        "steps": 12,
        "block_length": 8,
        "temperature": 0.0,
        "remasking": "low_confidence",
        "guidance_scale": 0.0,
        "threshold": None,
        "eos_handling": "stop",
        "seed": 3,
    }
    assert config["prompt"] == {"text": "def len(obj)", "append_dff": True, "dff_token": "<DFF>"}
    pieces = TokenPieces(tokenizer)
    assert config["tokenizer"]["pieces"] == [pieces(i) for i in range(len(tokenizer))]
    assert config["files"]["model.onnx"] == (output / "model.onnx").stat().st_size
    verification = config["verification"]
    assert verification["bound"] == pytest.approx(1e-4 * max(1.0, verification["max_abs_logit"]))
    assert verification["max_abs_difference"] <= verification["bound"]


def new_inputs():
    generator = torch.Generator().manual_seed(11)
    input_ids = torch.randint(0, 386, (3, 29), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :5] = 0
    return input_ids, attention_mask


def test_onnx_logits_match_pytorch_on_new_shapes_with_left_padding(checkpoints, llama_export):
    input_ids, attention_mask = new_inputs()
    expected = torch_logits(checkpoints / "llama", input_ids, attention_mask)
    actual = onnx_logits(llama_export[0], input_ids, attention_mask)
    assert np.abs(actual - expected)[attention_mask.bool().numpy()].max() <= 1e-4


@pytest.mark.parametrize("kind", ["qwen2", "gpt2"])
def test_other_architectures_export_to_the_same_logits(kind, checkpoints, tmp_path):
    # The graph alone (the CLI around it is the same for every architecture: see the llama tests).
    path = tmp_path / "model.onnx"
    cli.export_graph(tiny_model(kind, 386), path, cli.DEFAULT_OPSET, 64)
    input_ids, attention_mask = new_inputs()
    expected = torch_logits(checkpoints / kind, input_ids, attention_mask)
    actual = onnx_logits(tmp_path, input_ids, attention_mask)
    assert np.abs(actual - expected)[attention_mask.bool().numpy()].max() <= 1e-4


def reuse_the_llama_graph(monkeypatch, llama_export):
    """export_graph copies llama_export's float32 graph (same checkpoint, opset and --max_length 64) instead of
    running torch.onnx.export again: the test exercises what the CLI does with the graph."""

    def copy_graph(model, path, opset, max_length):
        assert (opset, max_length) == (cli.DEFAULT_OPSET, 64)
        shutil.copyfile(llama_export[0] / "model.onnx", path)

    monkeypatch.setattr(cli, "export_graph", copy_graph)


def test_int8_export_is_smaller_and_within_its_documented_bound(
    checkpoints, llama_export, tmp_path, capsys, monkeypatch
):
    reuse_the_llama_graph(monkeypatch, llama_export)
    config = export(checkpoints, "llama", tmp_path / "int8", "--quantize", "int8")
    assert config["quantization"] == "int8"
    parameters = sum(p.numel() for p in make_tiny_llama(386, max_position_embeddings=64).parameters())
    saved = llama_export[1]["files"]["model.onnx"] - config["files"]["model.onnx"]
    assert saved >= 0.7 * 3 * parameters  # 3 of every 4 weight bytes gone, for nearly all weights
    verification = config["verification"]
    assert verification["bound"] == pytest.approx(cli.INT8_RELATIVE_BOUND * max(1.0, verification["max_abs_logit"]))
    assert 0 < verification["max_abs_difference"] <= verification["bound"]
    assert f"logit difference {verification['max_abs_difference']:.3g}" in capsys.readouterr().out


def test_a_failed_verification_writes_nothing(checkpoints, llama_export, tmp_path, monkeypatch, capsys):
    reuse_the_llama_graph(monkeypatch, llama_export)
    monkeypatch.setattr(cli, "FLOAT32_RELATIVE_BOUND", 0.0)
    output = tmp_path / "rejected"
    with pytest.raises(SystemExit, match="differ from PyTorch's by"):
        cli.main(["--model", str(checkpoints / "llama"), "--output", str(output)])
    assert not output.exists() and list(tmp_path.iterdir()) == []


def test_a_new_export_keeps_the_other_files_in_its_directory(checkpoints, llama_export, tmp_path, monkeypatch):
    """diff-serve-demo re-exports a checkpoint into CHECKPOINT/onnx with --overwrite: a quantised export or notes
    the user put there stay."""
    reuse_the_llama_graph(monkeypatch, llama_export)
    output = tmp_path / "onnx"
    output.mkdir()
    (output / "model.json").write_text("{}")
    (output / "int8").mkdir()
    (output / "int8" / "model.onnx").write_bytes(b"quantised")
    (output / "notes.txt").write_text("keep me")
    config = export(checkpoints, "llama", output, "--overwrite")
    assert config["files"]["model.onnx"] == (output / "model.onnx").stat().st_size
    assert (output / "int8" / "model.onnx").read_bytes() == b"quantised"
    assert (output / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]  # no staging directory left


def word_level_checkpoint(path, tokenizer_vocab=300):
    """A diffusion llama whose tokenizer is a word-level fast tokenizer (neither byte-level nor BPE)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(tokenizer_vocab)}
    backend = Tokenizer(models.WordLevel(vocab=words, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="w1", mask_token="w2", pad_token="w1")
    model = make_tiny_llama(tokenizer_vocab, max_position_embeddings=64)
    model.config.diffusion_config = masked_diffusion_config(tokenizer, dff_token=None)
    save_checkpoint(path, model, tokenizer)


@pytest.mark.parametrize(
    "name,flags,message",
    [
        ("causal", [], "is not a diffusion model (its config.json has no diffusion_config)"),
        ("llama", ["--opset", "13"], "--opset 13: the exporter writes opsets 18 to"),
        ("llama", ["--dtype", "bfloat16"], "the export is made and checked in float32 on the CPU"),
        ("llama", ["--cache", "prefix"], "--cache prefix: the page samples without a key/value cache"),
        ("llama", ["--max_length", "65"], "--max_length 65: give a length from 2 to the model's context (64)"),
        ("llama", ["--gen_length", "10", "--block_length", "4"], "multiple of block_length"),
        (
            "wordlevel",
            [],
            "byte-level BPE (GPT-2's scheme, as data_scripts/train_tokenizer.py makes); this checkpoint "
            "has a TokenizersBackend with 300 ids, a WordLevel model (not BPE).",
        ),
        ("existing", [], "exists and is not empty: pass --overwrite"),
        (
            "byt5 beside a larger vocabulary",
            [],
            ("the model predicts 400 ids but its ByT5Tokenizer has text for 386 (ids 386 to 399 have none)"),
        ),
    ],
)
def test_bad_input_gets_one_clear_error(checkpoints, tmp_path, capsys, name, flags, message):
    output = tmp_path / "out"
    if name == "wordlevel":
        word_level_checkpoint(tmp_path / "wordlevel")
        model = tmp_path / "wordlevel"
    elif name.startswith("byt5"):  # transformers' ByT5Tokenizer with its 125 <extra_id_N> tokens
        model = tmp_path / "byt5"
        tokenizer = make_byte_tokenizer()
        larger = make_tiny_llama(400, max_position_embeddings=64)
        larger.config.diffusion_config = masked_diffusion_config(tokenizer)
        save_checkpoint(model, larger, tokenizer)
    else:
        model = checkpoints / ("llama" if name == "existing" else name)
    if name == "existing":
        output.mkdir()
        (output / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--model", str(model), "--output", str(output), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (output / "model.onnx").exists()


def byte_level_bpe_variant(change: dict):
    """A byte-level BPE learnt from a few lines, with `change` written over parts of its tokenizer.json state (a
    part given a new "type" is replaced whole)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from diff_trainer.data.bpe_tokenizer import train_bpe_tokenizer

    state = json.loads(train_bpe_tokenizer(["a cat sat on the mat"] * 3, 270).backend_tokenizer.to_str())
    for part, fields in change.items():
        current = state[part] or {}
        replaced = fields is None or fields.get("type", current.get("type")) != current.get("type")
        state[part] = fields if replaced else {**current, **fields}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(state)))


def test_a_byte_level_bpe_gets_the_bpe_table():
    table = cli.tokenizer_table(byte_level_bpe_variant({}), 0)
    assert table["kind"] == "bpe" and table["pattern"] == cli.BYTE_LEVEL_SPLIT
    assert table["merges"][:2] == [["a", "t"], ["c", "at"]]  # "at" is in cat, sat and mat; then "cat"
    assert table["byte_chars"][ord(" ")] == "Ġ" and table["byte_chars"][ord("\n")] == "Ċ"  # GPT-2's alphabet
    assert table["byte_chars"][ord("a")] == "a" and len(set(table["byte_chars"])) == 256


@pytest.mark.parametrize(
    "change,reason",
    [
        ({"model": {"dropout": 0.1}}, "a BPE with dropout set"),
        ({"normalizer": {"type": "NFC"}}, "a NFC normalizer"),
        (
            {"pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}},
            "a Metaspace pre-tokenizer (not ByteLevel with its regex split)",
        ),
        ({"pre_tokenizer": {"use_regex": False}}, "a ByteLevel pre-tokenizer (not ByteLevel with its regex split)"),
        ({"pre_tokenizer": {"add_prefix_space": True}}, "a ByteLevel pre-tokenizer with add_prefix_space"),
        ({"decoder": None}, "a None decoder (not ByteLevel)"),
    ],
)
def test_a_bpe_the_page_cannot_encode_exactly_is_refused_with_the_reason(change, reason):
    with pytest.raises(ValueError) as error:
        cli.tokenizer_table(byte_level_bpe_variant(change), 0)
    assert f"this checkpoint has a TokenizersBackend with 270 ids, {reason}. Train the model" in str(error.value)
