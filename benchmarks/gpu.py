#!/usr/bin/env python
"""GPU figures: diffusion vs causal training step, DPO (LoRA reference) vs SFT peak memory, sampling vs KV-cache
generate.

    python benchmarks/gpu.py [--steps 10] [--hidden_size 1280] [--layers 24] [--batch_size 8] [--block_size 2048]

Runs on a CUDA GPU only (it refuses to start on a machine without one). All models are randomly initialised
Llamas with the byte tokenizer (no downloads); the default shape has ~0.48B parameters.

(a) Training step, bf16 autocast (as `--bf16 true`), AdamW: the causal LM (Trainer, HF's shifted loss) and masked
    diffusion (DiffusionTrainer: DiffusionCollator batches, the project's loss) from identical weights on the same
    random rows, steps alternating C D D C ...; median seconds per step, tokens/s and peak memory of each.
(b) Peak memory of one LoRA step: VRPO DPO (DiffusionDPOTrainer, reference = the policy without adapters, n masked
    copies per response) vs a LoRA SFT step (DiffusionTrainer) on the same 2·B·n noisy sequences the DPO policy
    sees; the ratio is what the reference costs (goal ≤ 1.15×).
(c) Sampling throughput in bf16: the diffusion sampler (one and two tokens per step, semi-autoregressive blocks)
    vs `model.generate` with KV cache on the same weights made causal; new tokens per second.
"""

import argparse
import copy
import gc
import tempfile
import time

import torch
from transformers import Trainer, default_data_collator, set_seed

from common import markdown_table, median, quiet
from diff_trainer.models.loading import add_special_tokens, load_model, load_tokenizer
from diff_trainer.objectives.masked import seeded_generator
from diff_trainer.sampling.masked import generate
from diff_trainer.training.args.diffusion import DiffusionTrainingArguments
from diff_trainer.training.args.dpo import DPOTrainingArguments
from diff_trainer.training.args.model import ModelArguments
from diff_trainer.training.dpo import DiffusionDPOTrainer
from diff_trainer.training.model import prepare_model
from diff_trainer.training.trainer import DiffusionTrainer

GIB = 1024**3
DEVICE = "cuda"
DFF = "<DFF>"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="measured steps per objective in (a), after 3 warm-up")
    parser.add_argument("--hidden_size", type=int, default=1280)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--batch_size", type=int, default=8, help="(a): rows per step")
    parser.add_argument("--block_size", type=int, default=2048, help="(a): tokens per row")
    parser.add_argument("--pairs", type=int, default=4, help="(b): preference pairs per step")
    parser.add_argument("--mc_samples", type=int, default=8, help="(b): masked copies per response (VRPO n)")
    parser.add_argument("--prompt_length", type=int, default=128, help="(b), (c)")
    parser.add_argument("--response_length", type=int, default=384, help="(b)")
    parser.add_argument("--gen_length", type=int, default=256, help="(c): new tokens per sequence")
    parser.add_argument("--gen_batch", type=int, default=8, help="(c): sequences sampled together")
    return parser.parse_args()


def llama_arguments(args) -> ModelArguments:
    heads = max(1, args.hidden_size // 64)
    overrides = (
        f"hidden_size={args.hidden_size},intermediate_size={args.hidden_size * 27 // 10},"
        f"num_hidden_layers={args.layers},num_attention_heads={heads},num_key_value_heads={heads},"
        f"max_position_embeddings={max(args.block_size, args.prompt_length + args.gen_length, 4096)}"
    )
    return ModelArguments(
        tokenizer_name="byte",
        model_type="llama",
        config_overrides=overrides,
        attn_implementation="sdpa",
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
    )


def training_arguments(output_dir: str, batch_size: int, kind=DiffusionTrainingArguments, **settings):
    """bf16 autocast (as --bf16 true), AdamW at 1e-4; `settings` are the diffusion or DPO flags."""
    return kind(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        bf16=True,
        learning_rate=1e-4,
        report_to="none",
        seed=0,
        do_train=True,
        **settings,
    )


def diffusion_model(model_args, tokenizer, new_token_ids, args: DiffusionTrainingArguments):
    """A fresh model made bidirectional with its diffusion_config (and LoRA when model_args.use_lora)."""
    return prepare_model(
        model_args,
        tokenizer,
        "diffusion",
        new_token_ids=new_token_ids,
        diffusion_settings={**args.diffusion_settings(), "dff_token": DFF},
    )


def noised_batch(trainer: DiffusionTrainer, rows: list[dict]) -> dict:
    """The clean batch of `rows` through the trainer's forward process, as its get_batch_samples does."""
    return trainer.train_noiser(default_data_collator(rows), seeded_generator(0, 0, 0, 0))


def random_rows(count: int, length: int, low: int, high: int, labelled_from: int = 0) -> list[dict]:
    """Feature dicts of random token rows; labels from position `labelled_from` on (earlier ones are the prompt)."""
    ids = torch.randint(low, high, (count, length)).tolist()
    return [
        {"input_ids": row, "attention_mask": [1] * length, "labels": [-100] * labelled_from + row[labelled_from:]}
        for row in ids
    ]


class Step:
    """One Trainer's real training step (its training_step, clipping, AdamW), timed with CUDA synchronisation."""

    def __init__(self, trainer: Trainer, batch: dict):
        self.trainer, self.batch = trainer, batch
        self.optimizer = trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer's own loop, read by training_step
        self.seconds, self.peak_bytes = [], 0

    def __call__(self) -> None:
        trainer = self.trainer
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        num_items = trainer._get_num_items_in_batch([self.batch], trainer.args.device)  # as Trainer's loop does
        trainer.training_step(trainer.model, self.batch, num_items)
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.args.max_grad_norm)
        self.optimizer.step()
        trainer.model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - start)
        self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated())


def resident_bytes(step: Step) -> int:
    """Bytes a trainer keeps on the GPU between steps: its parameters and optimizer states (gradients are freed)."""
    tensors = list(step.trainer.model.parameters())
    tensors += [
        value for state in step.optimizer.state.values() for value in state.values() if isinstance(value, torch.Tensor)
    ]
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type == "cuda")


def free_memory() -> int:
    """Collect garbage, return cached blocks; the bytes still allocated."""
    gc.collect()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def training_step_time(args, output_dir: str) -> None:
    """(a) causal vs diffusion training step."""
    model_args = llama_arguments(args)
    tokenizer = load_tokenizer(model_args)
    new_token_ids = add_special_tokens(tokenizer, DFF, model_args.mask_token)
    rows = random_rows(args.batch_size, args.block_size, 0, 256)
    set_seed(0)
    clm_model = load_model(model_args, tokenizer)
    set_seed(0)
    diffusion_args = training_arguments(
        output_dir, args.batch_size, train_diff_model=True, loss_normalization="llada_pretrain"
    )
    diffusion_net = diffusion_model(model_args, tokenizer, new_token_ids, diffusion_args)
    parameters = sum(p.numel() for p in clm_model.parameters())
    clm = Trainer(
        model=clm_model,
        args=training_arguments(output_dir, args.batch_size),
        data_collator=default_data_collator,
        processing_class=tokenizer,
    )
    diffusion = DiffusionTrainer(diffusion_net, diffusion_args, processing_class=tokenizer)
    steps = {
        "causal LM (Trainer)": Step(clm, default_data_collator(rows)),
        "masked diffusion (DiffusionTrainer)": Step(diffusion, noised_batch(diffusion, rows)),
    }
    clm_step, diffusion_step = steps.values()
    for _ in range(3):
        clm_step()
        diffusion_step()
    for step in steps.values():
        step.seconds.clear()
    for pair in range(args.steps):
        for step in (clm_step, diffusion_step) if pair % 2 == 0 else (diffusion_step, clm_step):
            step()
    tokens = args.batch_size * args.block_size
    # both models live on the GPU together: each step's own peak is the measured peak minus the other's resident bytes
    own_peaks = [
        clm_step.peak_bytes - resident_bytes(diffusion_step),
        diffusion_step.peak_bytes - resident_bytes(clm_step),
    ]
    print(
        f"(a) training step: Llama {parameters / 1e9:.2f}B parameters, {args.batch_size}×{args.block_size} "
        f"tokens, bf16 autocast, AdamW, median of {args.steps} steps after 3 warm-up\n"
    )
    print(
        markdown_table(
            ["objective", "s/step", "tokens/s", "peak GiB"],
            [
                [name, median(s.seconds), tokens / median(s.seconds), peak / GIB]
                for (name, s), peak in zip(steps.items(), own_peaks)
            ],
        )
    )
    paired = median([d / c for d, c in zip(diffusion_step.seconds, clm_step.seconds)])
    print(f"\ndiffusion / causal step time: {paired:.3f} (median over adjacent pairs)\n")


def dpo_memory(args, output_dir: str) -> None:
    """(b) peak memory: DPO with the LoRA reference vs LoRA SFT on the same noisy sequences."""
    model_args = llama_arguments(args)
    model_args.use_lora = True
    tokenizer = load_tokenizer(model_args)
    new_token_ids = add_special_tokens(tokenizer, DFF, model_args.mask_token)
    n, pairs, width = args.mc_samples, args.pairs, args.prompt_length + args.response_length
    peaks = {}

    baseline = free_memory()
    set_seed(0)
    sft_rows = random_rows(2 * pairs * n, width, 0, 256, labelled_from=args.prompt_length)
    sft_args = training_arguments(output_dir, len(sft_rows), train_diff_model=True, loss_normalization="llada_sft")
    sft = DiffusionTrainer(
        diffusion_model(model_args, tokenizer, new_token_ids, sft_args), sft_args, processing_class=tokenizer
    )
    sft_step = Step(sft, noised_batch(sft, sft_rows))
    for _ in range(3):
        sft_step()
    peaks["LoRA SFT step (DiffusionTrainer)"] = sft_step.peak_bytes - baseline
    del sft, sft_step

    baseline = free_memory()
    set_seed(0)
    policy = diffusion_model(model_args, tokenizer, new_token_ids, sft_args)  # LoRA: the reference is adapters off
    features = [
        {
            "prompt_ids": torch.randint(0, 256, (args.prompt_length,)).tolist(),
            "chosen_ids": torch.randint(0, 256, (args.response_length,)).tolist(),
            "rejected_ids": torch.randint(0, 256, (args.response_length,)).tolist(),
            "mask_seed": i,
        }
        for i in range(pairs)
    ]
    dpo = DiffusionDPOTrainer(
        policy,
        args=training_arguments(output_dir, pairs, DPOTrainingArguments, mc_samples=n),
        processing_class=tokenizer,
    )
    dpo_step = Step(dpo, dpo.data_collator(features))
    for _ in range(3):
        dpo_step()
    peaks["VRPO DPO step, LoRA reference (DiffusionDPOTrainer)"] = dpo_step.peak_bytes - baseline

    print(
        f"(b) peak memory of one LoRA step (r {model_args.lora_r}), {pairs} pairs × 2 responses × {n} masked "
        f"copies = {2 * pairs * n} sequences of {width} tokens, bf16 autocast, AdamW\n"
    )
    print(markdown_table(["step", "peak GiB"], [[name, peak / GIB] for name, peak in peaks.items()]))
    sft_peak, dpo_peak = peaks.values()
    print(f"\nDPO / SFT peak memory: {dpo_peak / sft_peak:.3f} (goal ≤ 1.15)\n")


def timed(function, repeats: int = 3) -> float:
    """Median seconds of `function()` over `repeats` runs after one warm-up run."""
    function()
    seconds = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return median(seconds)


def sampling_speed(args) -> None:
    """(c) diffusion sampler vs KV-cache generate on the same weights."""
    model_args = llama_arguments(args)
    tokenizer = load_tokenizer(model_args)
    add_special_tokens(tokenizer, DFF, model_args.mask_token)
    set_seed(0)
    model = load_model(model_args, tokenizer).to(DEVICE, torch.bfloat16).eval()
    causal = copy.deepcopy(model)
    model.config.is_causal = False
    causal.config.is_causal = True
    prompts = torch.randint(0, 256, (args.gen_batch, args.prompt_length), device=DEVICE)
    new_tokens = args.gen_batch * args.gen_length
    block = min(32, args.gen_length)
    runs = {
        f"diffusion, 1 token/step (steps {args.gen_length}, block {block})": dict(steps=args.gen_length),
        f"diffusion, 2 tokens/step (steps {args.gen_length // 2}, block {block})": dict(steps=args.gen_length // 2),
    }
    rows = []
    for name, settings in runs.items():
        seconds = timed(
            lambda: generate(
                model,
                prompts,
                gen_length=args.gen_length,
                block_length=block,
                mask_token_id=tokenizer.mask_token_id,
                eos_handling="none",
                **settings,
            )
        )
        rows.append([name, seconds, new_tokens / seconds])
    with torch.no_grad():
        seconds = timed(
            lambda: causal.generate(
                input_ids=prompts,
                attention_mask=torch.ones_like(prompts),
                max_new_tokens=args.gen_length,
                min_new_tokens=args.gen_length,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    rows.append(["causal `model.generate`, KV cache, greedy", seconds, new_tokens / seconds])
    print(
        f"(c) sampling: {args.gen_batch} sequences × {args.gen_length} new tokens after {args.prompt_length}-token "
        f"prompts, bf16 weights, median of 3 after a warm-up\n"
    )
    print(markdown_table(["sampler", "seconds", "new tokens/s"], rows))
    print(f"\ndiffusion (1 token/step) / generate tokens/s: {rows[0][2] / rows[2][2]:.3f}\n")


def main():
    args = parse_args()
    if not torch.cuda.is_available():
        raise SystemExit(
            "benchmarks/gpu.py measures a CUDA GPU and none is visible here "
            "(torch.cuda.is_available() is False); run it on a GPU machine."
        )
    quiet()
    properties = torch.cuda.get_device_properties(0)
    print(
        f"GPU: {properties.name}, {properties.total_memory / GIB:.0f} GiB; torch {torch.__version__} "
        f"(CUDA {torch.version.cuda}).\n"
    )
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as output_dir:
        training_step_time(args, output_dir)
        free_memory()
        dpo_memory(args, output_dir)
        free_memory()
    sampling_speed(args)


if __name__ == "__main__":
    main()
