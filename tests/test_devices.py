"""--device / --dtype resolution, and the CLIs loading a checkpoint where and how they are told."""

import pytest
import torch

from conftest import make_byte_tokenizer, make_tiny_llama
from diff_trainer import devices
from diff_trainer.cli import generate as cli


@pytest.fixture
def two_gpus(monkeypatch):
    """Pretend two bf16-capable CUDA devices are visible (nothing is allocated on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_auto_device_is_the_first_gpu_when_there_is_one(two_gpus):
    assert devices.resolve_device("auto") == torch.device("cuda", 0)
    assert devices.resolve_device("cuda") == torch.device("cuda", 0)
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert devices.resolve_device("cpu") == torch.device("cpu")


def test_auto_device_is_the_cpu_without_gpu(no_gpu):
    assert devices.resolve_device("auto") == torch.device("cpu")


def test_absent_or_unknown_devices_are_refused_with_the_way_out(no_gpu, monkeypatch):
    with pytest.raises(ValueError, match="no CUDA GPU is visible.*--device cpu"):
        devices.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"only 2 CUDA device\(s\).*cuda:0 \.\. cuda:1"):
        devices.resolve_device("cuda:2")
    with pytest.raises(ValueError, match="not a device"):
        devices.resolve_device("gpu0")
    with pytest.raises(ValueError, match="not supported"):
        devices.resolve_device("meta")


CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "stored, device, expected",
    [
        ("bfloat16", CUDA, torch.bfloat16),  # a bf16 checkpoint stays bf16 on a GPU
        ("float16", CUDA, torch.float16),
        ("float32", CUDA, torch.float32),
        (None, CUDA, torch.float32),  # nothing recorded: full precision
        ("torch.bfloat16", CUDA, torch.bfloat16),
        ("bfloat16", CPU, torch.float32),  # half-precision matmuls are slow on the CPU
        ("float16", CPU, torch.float32),
    ],
)
def test_auto_dtype_follows_the_checkpoint_on_a_gpu_and_is_float32_on_the_cpu(two_gpus, stored, device, expected):
    assert devices.resolve_dtype("auto", device, stored) == expected


def test_auto_dtype_falls_back_to_float16_on_a_gpu_without_bfloat16(two_gpus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert devices.resolve_dtype("auto", CUDA, torch.bfloat16) == torch.float16


def test_an_explicit_dtype_wins_and_unknown_names_are_refused():
    assert devices.resolve_dtype("bfloat16", CPU, torch.float32) == torch.bfloat16
    assert devices.resolve_dtype("float16", CPU, None) == torch.float16
    assert devices.resolve_dtype("float32", CUDA, torch.bfloat16) == torch.float32
    with pytest.raises(ValueError, match="'half' is not one of auto, bfloat16, float16, float32"):
        devices.resolve_dtype("half", CPU)


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    tokenizer = make_byte_tokenizer()
    model = make_tiny_llama(len(tokenizer)).to(torch.bfloat16)
    model.config.diffusion_config = {
        "objective": "masked_diffusion",
        "mask_token_id": tokenizer.mask_token_id,
        "shift_logits": False,
        "dff_token": "<DFF>",
    }
    path = tmp_path_factory.mktemp("bf16")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_checkpoint_dtype_reads_config_json(bf16_checkpoint, tmp_path):
    assert devices.checkpoint_dtype(str(bf16_checkpoint)) == torch.bfloat16
    (tmp_path / "config.json").write_text('{"torch_dtype": "float16"}')
    assert devices.checkpoint_dtype(str(tmp_path)) == torch.float16
    assert devices.checkpoint_dtype(str(tmp_path / "missing")) is None
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(f'{{"base_model_name_or_path": "{bf16_checkpoint}"}}')
    assert devices.checkpoint_dtype(str(adapter)) == torch.bfloat16  # the base model's dtype


def load(path, *flags):
    parser = cli.build_parser()
    args = parser.parse_args(["--model", str(path), "--prompt", "x", *flags])
    model, _, _ = cli.load_from_arguments(parser, args)
    return model


def test_cli_loads_a_bf16_checkpoint_in_float32_on_the_cpu_unless_told(bf16_checkpoint, no_gpu):
    auto = load(bf16_checkpoint)
    assert (auto.device.type, auto.dtype) == ("cpu", torch.float32)
    kept = load(bf16_checkpoint, "--device", "cpu", "--dtype", "bfloat16")
    assert kept.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in kept.parameters())


def test_cli_refuses_a_gpu_that_is_not_there(bf16_checkpoint, no_gpu, capsys):
    with pytest.raises(SystemExit):
        load(bf16_checkpoint, "--device", "cuda:0")
    assert "no CUDA GPU is visible" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_generation_on_a_device_repeats_with_its_seed(bf16_checkpoint, tmp_path, dtype):
    outputs = []
    for name in ("a.txt", "b.txt"):
        cli.main(
            [
                "--model",
                str(bf16_checkpoint),
                "--prompt",
                "1+1=",
                "--gen_length",
                "8",
                "--steps",
                "4",
                "--temperature",
                "1",
                "--seed",
                "3",
                "--device",
                "cpu",
                "--dtype",
                dtype,
                "--output",
                str(tmp_path / name),
            ]
        )
        outputs.append((tmp_path / name).read_text())
    assert outputs[0] == outputs[1]
