#!/usr/bin/env python
"""Training throughput: causal vs diffusion, eager vs compiled, full-logits vs masked-only head, isolation on/off.

    python benchmarks/throughput.py --quick        # 3 measured steps per configuration, batch 4
    python benchmarks/throughput.py [--steps 20] [--warmup 3] [--batch_size 8] [--block_size 256] [--hidden_size 128]
        [--layers 4] [--vocab_size 32768] [--no_compile]
    python benchmarks/throughput.py --trainer --quick   # Trainer.train of configs/demo.yaml, eager vs --torch_compile
    python benchmarks/throughput.py --trainer [--steps 20] [--warmup 3]

On a CUDA machine the same command measures the GPU (bf16 autocast) and its defaults become a ~0.5B Llama
(hidden 1280, 24 layers) at 8 × 2048 tokens. Every configuration runs in its own process (so peak memory is its
own) on the same randomly initialised Llama (seed 0) and the same packed rows of random tokens, documents of 16-128
tokens each closed by EOS. A step is the Trainer's: `training_step` (forward, loss, backward), gradient clipping,
AdamW step. The causal LM uses HF's shifted loss inside the model; diffusion uses `DiffusionTrainer` on rows noised
afresh every step (--masked_head true|false, --isolate_documents). Compiled = `torch.compile(model)`, as
--torch_compile does; its first steps (compilation) are warm-up, at least 2 (the forward and the backward graph
are compiled in the first; the masked head keeps every shape inside the model static, so nothing recompiles later).

Reported per configuration: median step time and tokens/s (B·L per step), the ratio of step times to the eager
causal step, the same for the process's CPU time per step (steadier than wall time when other jobs share the cores;
with --threads 1 it is the work done), MFU and peak memory. MFU = tokens/s · FLOPs per token / peak FLOP/s, with
FLOPs per token = 6·N + 12·layers·L·hidden (N = parameters of every matmul: the layers and the LM head, not the input
embedding lookup; the second term is attention's scores and weighted sum, PaLM appendix B), the same nominal count
for every configuration (the masked-only head does less work for the same tokens). Peak FLOP/s: the GPU's dense
bf16 figure (H100/H200 989 TFLOP/s, A100 312), or on CPU the fp32 matmul rate measured here first. Peak memory:
CUDA's peak allocated bytes; on CPU the process's peak resident set (ru_maxrss: model, optimizer and libraries
included).
Each compiled configuration's first-step loss is printed next to its eager twin's (same weights, batch and masks).
The table also goes to benchmarks/results/throughput[_quick].md (progress lines go to stderr only).

--trainer: the whole `Trainer.train` of `python run_clm_diff.py configs/demo.yaml` (diffusion, masked head on; its
1M-parameter Llama, byte vocabulary, batch 8×256 of the bundled corpus) eager and with `--torch_compile true`, each
run twice in a subprocess: for --warmup steps and for --warmup + --steps steps. The step time after warm-up is the
difference of the two runs' `train_runtime` (the Trainer's own figure) over --steps, so compilation, loading and the
first steps cancel out (and the same with the processes' CPU time). The compiled runs share an inductor cache that a
first, uncounted run fills. The children run with TORCH_LOGS=recompiles,graph_breaks; the table counts both.
Written to benchmarks/results/throughput_trainer[_quick].md.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

from common import (
    DEMO_DIFFUSION_CONFIG,
    REPO_ROOT,
    machine_summary,
    markdown_table,
    median,
    quiet,
    results_file,
    run_logged,
)

EOS = 1  # ByT5's EOS id, the rows' document separator
CONFIGURATIONS = {  # name: (objective, masked head, isolate documents, compiled)
    "causal LM": ("causal", None, False, False),
    "diffusion, full logits": ("diffusion", False, False, False),
    "diffusion, masked head": ("diffusion", True, False, False),
    "diffusion, masked head, isolated": ("diffusion", True, True, False),
    "causal LM, compiled": ("causal", None, False, True),
    "diffusion, full logits, compiled": ("diffusion", False, False, True),
    "diffusion, masked head, compiled": ("diffusion", True, False, True),
}
COMPILED_WARMUP = 2  # compiled: at least the first step (compiles the forward and the backward graphs) and one more
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="measured steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps first (compilation included)")
    parser.add_argument("--batch_size", type=int, default=None, help="rows per step (CPU 8, CUDA 8)")
    parser.add_argument("--block_size", type=int, default=None, help="tokens per row (CPU 256, CUDA 2048)")
    parser.add_argument("--hidden_size", type=int, default=None, help="CPU 128, CUDA 1280")
    parser.add_argument("--layers", type=int, default=None, help="CPU 4, CUDA 24")
    parser.add_argument("--vocab_size", type=int, default=32768)
    parser.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    parser.add_argument("--no_compile", action="store_true", help="skip the compiled configurations")
    parser.add_argument(
        "--quick", action="store_true", help="--steps 3 --warmup 1 --batch_size 4 (--trainer: --steps 20 --warmup 3)"
    )
    parser.add_argument(
        "--trainer",
        action="store_true",
        help="time Trainer.train of configs/demo.yaml, eager vs --torch_compile (see the docstring)",
    )
    parser.add_argument("--only", help=argparse.SUPPRESS)  # one configuration, in a child process
    parser.add_argument("--result", help=argparse.SUPPRESS)  # where the child writes its figures (json)
    args = parser.parse_args(argv)
    if args.quick and args.trainer:
        args.steps, args.warmup = 20, 3
    elif args.quick:
        args.steps, args.warmup, args.batch_size = 3, 1, args.batch_size or 4
    cuda = torch.cuda.is_available()
    for name, cpu_value, cuda_value in (
        ("batch_size", 8, 8),
        ("block_size", 256, 2048),
        ("hidden_size", 128, 1280),
        ("layers", 4, 24),
    ):
        if getattr(args, name) is None:
            setattr(args, name, cuda_value if cuda else cpu_value)
    return args


def llama(args, diffusion: bool):
    """The benchmark's Llama (seed 0); for diffusion bidirectional with a diffusion_config (mask id V-1)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from diff_trainer.diffusion_config import write_diffusion_config

    heads = max(1, args.hidden_size // 64) if torch.cuda.is_available() else 4
    config = LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.hidden_size * 3,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=args.block_size,
        eos_token_id=EOS,
        pad_token_id=EOS,
    )
    config._attn_implementation = "sdpa"
    if diffusion:
        write_diffusion_config(
            config,
            mask_token_id=args.vocab_size - 1,
            shift_logits=False,
            noise_schedule="linear",
            time_eps=1e-3,
            dff_token=None,
        )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def packed_rows(args) -> list[dict]:
    """B rows of L random tokens in documents of 16-128 tokens, each ending in EOS; every token trained."""
    generator = torch.Generator().manual_seed(0)
    tokens = []
    while len(tokens) < args.batch_size * args.block_size:
        length = int(torch.randint(16, 129, (1,), generator=generator))
        tokens += torch.randint(3, args.vocab_size - 1, (length - 1,), generator=generator).tolist() + [EOS]
    rows = torch.tensor(tokens[: args.batch_size * args.block_size]).reshape(args.batch_size, args.block_size)
    return [{"input_ids": row, "labels": row.clone(), "attention_mask": torch.ones_like(row)} for row in rows]


def flops_per_token(model, args) -> float:
    """6·N (matmul parameters: all but the input embedding) + 12·layers·L·hidden (attention)."""
    matmul_parameters = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    if model.get_output_embeddings().weight is model.get_input_embeddings().weight:  # tied: the head still multiplies
        matmul_parameters += model.get_output_embeddings().weight.numel()
    return 6 * matmul_parameters + 12 * args.layers * args.block_size * args.hidden_size


def measure_one(args, name: str) -> dict:
    """Build configuration `name`, run warm-up + measured steps; its figures."""
    from transformers import ByT5Tokenizer, Trainer, default_data_collator

    from diff_trainer.data.pipeline import RowLayout
    from diff_trainer.objectives.masked import seeded_generator
    from diff_trainer.training.args.diffusion import DiffusionTrainingArguments
    from diff_trainer.training.trainer import DiffusionTrainer

    objective, masked_head, isolate, compiled = CONFIGURATIONS[name]
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    model = llama(args, objective == "diffusion")
    rows = packed_rows(args)
    output_dir = tempfile.mkdtemp(prefix="bench_throughput_")
    common = dict(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-4,
        report_to="none",
        seed=0,
        use_cpu=not cuda,
        bf16=cuda,
        save_strategy="no",
    )
    if objective == "causal":
        trainer = Trainer(model=model, args=DiffusionTrainingArguments(**common), data_collator=default_data_collator)
    else:
        training_args = DiffusionTrainingArguments(
            **common,
            train_diff_model=True,
            masked_head=masked_head,
            isolate_documents=isolate,
            loss_normalization="llada_pretrain",
        )
        trainer = DiffusionTrainer(
            model,
            training_args,
            processing_class=ByT5Tokenizer(),
            row_layout=RowLayout("packed", args.block_size, None, "random", args.vocab_size, "0"),
        )
    model = trainer.model.to(device)
    optimizer = trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by the Trainer's loop, read by training_step
    step_model = torch.compile(model) if compiled else model
    clean = {key: value.to(device) for key, value in default_data_collator(rows).items()}

    losses = []

    def step(index: int) -> tuple[float, float]:
        start, start_cpu = time.perf_counter(), time.process_time()
        batch = clean if objective == "causal" else trainer.train_noiser(clean, seeded_generator(0, index))
        num_items = None if objective == "causal" else trainer._get_num_items_in_batch([batch], device)
        losses.append(float(trainer.training_step(step_model, batch, num_items)))  # under the Trainer's autocast
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start, time.process_time() - start_cpu

    warmup = [step(i) for i in range(max(args.warmup, COMPILED_WARMUP) if compiled else args.warmup)]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = [step(args.warmup + i) for i in range(args.steps)]
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "seconds": median(wall for wall, _ in times),
        "cpu_seconds": median(cpu for _, cpu in times),
        "first_step": warmup[0][0] if warmup else None,
        "peak_bytes": peak,
        "first_loss": losses[0],
        "flops_per_token": flops_per_token(model, args),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def cpu_peak_flops(threads: int) -> float:
    """The fp32 matmul rate of this CPU (2048² · 2048 multiply-adds, best of 5)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best


def peak_flops(threads: int) -> tuple[float, str]:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        for key, flops in PEAK_BF16_FLOPS.items():
            if key in name:
                return flops, f"{name}: {flops / 1e12:.0f} TFLOP/s dense bf16 (datasheet)"
        return float("nan"), f"{name}: no datasheet peak known here, MFU not computed"
    flops = cpu_peak_flops(threads)
    return flops, f"CPU fp32 matmul measured here: {flops / 1e9:.1f} GFLOP/s ({threads} threads)"


def row(name: str, result: dict, causal: dict, tokens: int, peak: float) -> list:
    """A table row: ms/step, tokens/s, step time / causal, CPU ms/step and / causal, MFU, peak MiB, first step s."""
    tokens_per_second = tokens / result["seconds"]
    mfu = tokens_per_second * result["flops_per_token"] / peak
    return [
        name,
        result["seconds"] * 1000,
        tokens_per_second,
        result["seconds"] / causal["seconds"],
        result["cpu_seconds"] * 1000,
        result["cpu_seconds"] / causal["cpu_seconds"],
        f"{100 * mfu:.1f}%",
        f"{result['peak_bytes'] / 2**20:.0f}",
        f"{result['first_step']:.1f}",
    ]


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    quiet()
    if args.only:
        figures = measure_one(args, args.only)
        with open(args.result, "w") as handle:
            json.dump(figures, handle)
        return
    if args.trainer:
        with results_file("throughput_trainer", args.quick):
            compare_trainer(args)
        return
    with results_file("throughput", args.quick):
        compare(args)


def compare(args):
    peak, peak_source = peak_flops(args.threads)
    device = "CUDA, bf16 autocast" if torch.cuda.is_available() else "CPU, fp32"
    print(
        f"Llama hidden {args.hidden_size}, {args.layers} layers, vocabulary {args.vocab_size}, batch "
        f"{args.batch_size}×{args.block_size}, {device}; {args.warmup} warm-up + {args.steps} measured steps per "
        f"configuration, each in its own process; {machine_summary(args.threads)}.\nPeak: {peak_source}.\n",
        flush=True,
    )
    names = [name for name, (*_, compiled) in CONFIGURATIONS.items() if not (compiled and args.no_compile)]
    figures, table = {}, []
    passed = sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as work:
        for name in names:
            result = os.path.join(work, "result.json")
            command = [sys.executable, os.path.abspath(__file__), *passed, "--only", name, "--result", result]
            finished = subprocess.run(command, cwd=REPO_ROOT)
            if finished.returncode != 0:
                raise SystemExit(f"configuration {name!r} failed with exit code {finished.returncode}")
            with open(result) as handle:
                figures[name] = json.load(handle)
            table.append(row(name, figures[name], figures["causal LM"], args.batch_size * args.block_size, peak))
            print(f"measured {name}: {figures[name]['seconds'] * 1000:.0f} ms/step", file=sys.stderr, flush=True)
    first = next(iter(figures.values()))
    print(
        f"\n{first['parameters'] / 1e6:.1f}M parameters; {first['flops_per_token'] / 1e6:.1f} MFLOP per token "
        "(6·N + 12·layers·L·hidden).\n"
    )
    memory = "peak MiB (allocated)" if torch.cuda.is_available() else "peak MiB (process RSS)"
    print(
        markdown_table(
            [
                "configuration",
                "ms/step (median)",
                "tokens/s",
                "step time / causal",
                "CPU ms/step",
                "CPU time / causal",
                "MFU",
                memory,
                "first step s",
            ],
            table,
        )
    )
    print("\nLoss of the first step (same weights, same batch and masks), compiled vs eager:")
    for name in [name for name in figures if name.endswith(", compiled")]:
        compiled, eager = figures[name]["first_loss"], figures[name.removesuffix(", compiled")]["first_loss"]
        print(f"  {name}: {compiled:.6f} vs {eager:.6f} (difference {compiled - eager:.2e})")


def trainer_run(args, compiled: bool, steps: int, work: str, label: str = "") -> dict:
    """`run_clm_diff.py configs/demo.yaml` for `steps` steps: its train_results.json, the CPU seconds of the whole
    process, and the recompiles and graph breaks its TORCH_LOGS output reports."""
    name = f"{label}{'compiled' if compiled else 'eager'}_{steps}"
    output_dir, log_path = os.path.join(work, name), os.path.join(work, name + ".log")
    command = [
        sys.executable,
        "run_clm_diff.py",
        DEMO_DIFFUSION_CONFIG,
        "--max_steps",
        str(steps),
        "--torch_compile",
        str(compiled).lower(),
        "--do_eval",
        "false",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--logging_steps",
        str(steps),
        "--output_dir",
        output_dir,
    ]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run_logged(command, log_path, args.threads, f"the {name.replace('_', ' ')}-step training")
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(os.path.join(output_dir, "train_results.json")) as handle:
        results = json.load(handle)
    with open(log_path) as handle:
        log = handle.read()
    results["cpu_seconds"] = cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    results["recompiles"] = log.count("[__recompiles] Recompiling function")
    results["graph_breaks"] = log.count("[__graph_breaks]")
    print(
        f"trained {name.replace('_', ' ')} steps: train_runtime {results['train_runtime']:.1f} s, "
        f"CPU {results['cpu_seconds']:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    return results


def compare_trainer(args):
    print(
        f"Trainer.train of `run_clm_diff.py configs/demo.yaml` (diffusion, masked head), CPU, fp32; each setting "
        f"run for {args.warmup} and for {args.warmup + args.steps} steps, step time = difference of the two runs / "
        f"{args.steps}: wall from the Trainer's train_runtime, CPU from the whole processes (steadier when other "
        f"jobs share the cores); compiled runs share an inductor cache filled by a first {args.warmup}-step run "
        f"(not counted), so both pay the same compilation; {machine_summary(args.threads)}.\n",
        flush=True,
    )
    table, steady = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_throughput_trainer_") as work:
        os.environ.update(TORCH_LOGS="recompiles,graph_breaks", TORCHINDUCTOR_CACHE_DIR=os.path.join(work, "inductor"))
        trainer_run(args, True, args.warmup, work, label="cache-filling_")
        runs = {
            (compiled, steps): trainer_run(args, compiled, steps, work)  # the two long runs back to back
            for steps in (args.warmup, args.warmup + args.steps)
            for compiled in (False, True)
        }
        for compiled in (False, True):
            short, long = runs[compiled, args.warmup], runs[compiled, args.warmup + args.steps]
            name = "--torch_compile true" if compiled else "eager"
            steady[name] = [(long[key] - short[key]) / args.steps for key in ("train_runtime", "cpu_seconds")]
            table.append(
                [
                    name,
                    short["train_runtime"],
                    long["train_runtime"],
                    steady[name][0] * 1000,
                    steady[name][1] * 1000,
                    steady["eager"][0] / steady[name][0],
                    steady["eager"][1] / steady[name][1],
                    f"{long['train_loss']:.6f}",
                    long["recompiles"],
                    long["graph_breaks"],
                ]
            )
    print(
        markdown_table(
            [
                "run",
                f"train_runtime s, {args.warmup} steps",
                f"train_runtime s, {args.warmup + args.steps} steps",
                "wall ms/step",
                "CPU ms/step",
                "speed-up (wall)",
                "speed-up (CPU)",
                "train_loss",
                "recompiles",
                "graph breaks",
            ],
            table,
        )
    )


if __name__ == "__main__":
    main()
