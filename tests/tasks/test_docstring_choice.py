"""docstring_choice end to end on a model trained in the test: the harness's accuracy is far above chance (0.25).

An easy synthetic corpus in the bundled corpus's layout (`signature<DFF>docstring`): each docstring repeats the
3-letter name in its signature, so a model that learnt the corpus tells the right docstring from 3 others.
"""

import json
import random
import shutil
import string
from pathlib import Path

import pytest
import torch
import zstandard

from conftest import make_byte_tokenizer, make_tiny_llama

pytest.importorskip("lm_eval", reason="needs the [eval] extra: pip install -e '.[eval]'")

from diff_trainer.cli import lm_eval as cli  # noqa: E402
from diff_trainer.diffusion.forward import mask_tokens, sample_times  # noqa: E402
from diff_trainer.diffusion.losses import masked_diffusion_loss  # noqa: E402
from diff_trainer.eval.confidence import accuracy_intervals  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NUM_RECORDS = 32
DFF = "<DFF>"


def synthetic_records() -> list[str]:
    rng = random.Random(0)
    names = set()
    while len(names) < NUM_RECORDS:
        names.add("".join(rng.choices(string.ascii_lowercase, k=3)))
    return [f"def m.{name}(x){DFF}{name}." for name in sorted(names)]


def write_zst(path: Path, texts: list[str]) -> None:
    lines = "".join(json.dumps({"text": text}) + "\n" for text in texts)
    path.write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))


def train_masked_diffusion(records: list[str], steps: int = 250, seed: int = 0):
    """A tiny masked-diffusion Llama trained full-batch on the records (the marker and what follows are learnt,
    EOS-padded on the right; masking probability (1 − 0.3)·t + 0.3, weight 1/p)."""
    tokenizer = make_byte_tokenizer()
    rows = [tokenizer.encode(text, add_special_tokens=False) for text in records]
    width = max(map(len, rows)) + 2
    ids = torch.tensor([row + [tokenizer.eos_token_id] * (width - len(row)) for row in rows])
    marker = tokenizer.convert_tokens_to_ids(DFF)
    maskable = torch.arange(width) >= torch.tensor([row.index(marker) for row in rows])[:, None]
    model = make_tiny_llama(len(tokenizer), seed=seed, max_position_embeddings=64).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        mask_prob = 0.7 * sample_times(len(ids), generator=generator) + 0.3
        noisy, masked = mask_tokens(ids, maskable, mask_prob, tokenizer.mask_token_id, generator)
        loss = masked_diffusion_loss(
            model(input_ids=noisy).logits, ids, masked, maskable, (1 / mask_prob)[:, None], "llada_sft"
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.config.diffusion_config = {
        "objective": "masked_diffusion",
        "mask_token_id": tokenizer.mask_token_id,
        "shift_logits": False,
        "noise_schedule": "linear",
        "time_eps": 0.3,
        "dff_token": DFF,
    }
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """tasks/, a synthetic data/stdlib_docstrings (the validation split holds the training records) and a model."""
    root = tmp_path_factory.mktemp("docstring_choice")
    shutil.copytree(ROOT / "tasks", root / "tasks")
    records = synthetic_records()
    data = root / "data" / "stdlib_docstrings"
    data.mkdir(parents=True)
    write_zst(data / "validation.jsonl.zst", records)
    model, tokenizer = train_masked_diffusion(records)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


def test_a_model_trained_on_the_corpus_scores_far_above_chance(workdir, monkeypatch):
    """Chance is 0.25. Measured over training seeds 0-3 (`train_masked_diffusion(records, seed=s)`, mc_num 16):
    acc 0.91-1.00 and acc_mutual_info 0.69-1.00 (mutual information subtracts a second Monte-Carlo bound, and how
    well a 250-step model knows the unconditional docstring varies with the seed). The floors sit below every
    measured run yet far above guessing: 26 of 32 has probability 4e-11 by chance, 18 of 32 2e-4."""
    monkeypatch.chdir(workdir)
    results = cli.evaluate(
        [
            "--model",
            "model",
            "--tasks",
            "docstring_choice",
            "--include_path",
            "tasks",
            "--model_args",
            "mc_num=16,batch_size=64,seed=0",
        ]
    )
    intervals = {row["metric"]: row for row in accuracy_intervals(results)}
    for metric, floor, interval_floor in (("acc,none", 26, 0.5), ("acc_mutual_info,none", 18, 0.25)):
        assert results["results"]["docstring_choice"][metric] >= floor / NUM_RECORDS, metric
        assert intervals[metric]["items"] == NUM_RECORDS and intervals[metric]["low_95"] > interval_floor, metric
