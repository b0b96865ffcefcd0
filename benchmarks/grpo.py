#!/usr/bin/env python
"""Measurement (not a test): the three GRPO log-probability estimators side by side on one task.

    python benchmarks/grpo.py --model outputs/grpo_sft --data_dir data/arithmetic [--steps 40] [--threads 1]
    python benchmarks/grpo.py --quick     # an untrained tiny model, 2 steps, 8 held-out problems (seconds)

The same start checkpoint, prompts, rollout budget (--prompts_per_step prompts x --num_generations completions per
step), learning rate and seed for each of one_step, coupled and elbo (--mc_samples), so the first rollouts are the
same completions. Printed per estimator:

- held-out exact match of the greedy sampler (temperature 0) on the first --eval_problems problems of
  test.jsonl, after --steps GRPO steps (the start's figure is printed once above the table);
- seconds per step spent in rollouts, in scoring (every estimator forward: current, old, reference) and in the
  backward pass, as DiffusionGRPOTrainer logs them (`time/rollout`, `time/scoring`, `time/backward`), and TRL's
  `step_time`; means over the steps;
- the variance of the log-ratio log π_θ − log π_old at policy = old. With the trainer's shared masks it is exactly 0
  (the column "shared" is the largest |log-ratio| measured that way). Scored on independent mask draws (what a
  trainer that redraws the masks for the current policy gets) it is the estimator's noise: --draws draws per
  completion of the start model on --variance_prompts held-out prompts, Var over pairs of draws, at the level of
  the trainer's ratio (per token for one_step and coupled, averaged over the completion tokens; per completion for
  elbo) and for the whole completion (sum over its tokens; elbo: the ELBO itself).

The tables also go to benchmarks/results/grpo[_quick].md.
"""

import argparse
import copy
import json
import os
import statistics
import tempfile

from common import machine_summary, markdown_table, quiet, results_file  # also puts the repository on sys.path

ESTIMATORS = ("one_step", "coupled", "elbo")
PHASES = ("rollout", "scoring", "backward")


def pairwise_variance(draws):
    """Var of x_i − x_j over ordered pairs of distinct draws, elementwise: Tensor[R, ...] -> Tensor[...].

    The mean of (x_i − x_j)² over i ≠ j; for independent draws it is twice their unbiased variance."""
    count = draws.shape[0]
    differences = draws.unsqueeze(0) - draws.unsqueeze(1)  # [R, R, ...], 0 on the diagonal
    return (differences**2).sum(dim=(0, 1)) / (count * (count - 1))


def log_ratio_variances(estimator: str, scores, completion_mask) -> tuple[float, float]:
    """(at the trainer's ratio level, per completion) variances of the log-ratio from --draws scorings.

    scores: Tensor[R, B, T] per token (one_step, coupled) or Tensor[R, B] per completion (elbo)."""
    mask = completion_mask.to(scores.dtype)
    if estimator == "elbo":
        sequence = pairwise_variance(scores).mean().item()
        return sequence, sequence
    per_token = pairwise_variance(scores)
    token = ((per_token * mask).sum() / mask.sum()).item()
    return token, pairwise_variance((scores * mask).sum(dim=2)).mean().item()


def write_quick_data(directory: str) -> tuple[str, str, str]:
    """A tiny untrained masked-diffusion Llama (byte tokenizer) and 2-digit addition problems."""
    import torch
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    from diff_trainer.diffusion_config import write_diffusion_config

    tokenizer = ByT5Tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<DFF>", "<MASK>"]})
    tokenizer.mask_token = "<MASK>"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
        is_causal=False,
    )
    model = LlamaForCausalLM(config)
    write_diffusion_config(
        model.config,
        mask_token_id=tokenizer.mask_token_id,
        shift_logits=False,
        noise_schedule="linear",
        time_eps=1e-3,
        dff_token="<DFF>",
    )
    model_dir = os.path.join(directory, "model")
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    files = []
    for name, operands in (("train", range(0, 50, 3)), ("test", range(1, 50, 7))):
        path = os.path.join(directory, f"{name}.jsonl")
        with open(path, "w") as handle:
            for a in operands:
                handle.write(json.dumps({"prompt": f"{a:02d}+{a // 2:02d}=", "answer": f"{a + a // 2:03d}"}) + "\n")
        files.append(path)
    return model_dir, files[0], files[1]


def grpo_config(args, estimator: str, output_dir: str):
    from diff_trainer.training.args.grpo import DiffusionGRPOConfig

    return DiffusionGRPOConfig(
        output_dir=output_dir,
        logp_estimator=estimator,
        mc_samples=args.mc_samples,
        max_steps=args.steps,
        per_device_train_batch_size=args.prompts_per_step * args.num_generations,
        num_generations=args.num_generations,
        max_completion_length=args.gen_length,
        learning_rate=args.learning_rate,
        beta=args.beta,
        temperature=1.0,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        bf16=False,
        use_cpu=True,
        disable_tqdm=True,
        seed=args.seed,
    )


def load_start(args):
    from transformers import AutoModelForCausalLM

    from diff_trainer.models.loading import load_saved_tokenizer

    return AutoModelForCausalLM.from_pretrained(args.model), load_saved_tokenizer(args.model)


def exact_match(model, tokenizer, problems, gen_length: int) -> float:
    """Greedy exact match on `problems` ({"prompt" with <DFF>, "answer"}), scored by the `arithmetic` reward."""
    import torch

    from diff_trainer.sampling.settings import run_sampler, sampler_for
    from diff_trainer.training.grpo import encode_prompt, until_stop
    from diff_trainer.training.rewards import arithmetic

    config = sampler_for(model, tokenizer, gen_length=gen_length, temperature=0.0)
    prompt_ids = [encode_prompt(tokenizer, problem["prompt"]) for problem in problems]
    model.eval()
    with torch.no_grad():
        generated = run_sampler(model, prompt_ids, config).generated.tolist()
    completions = [tokenizer.decode(until_stop(row, config.eos_ids), skip_special_tokens=True) for row in generated]
    scores = arithmetic(None, completions, [problem["answer"] for problem in problems])
    return sum(scores) / len(scores)


def train_one(args, estimator: str, prompts, output_dir: str) -> dict:
    """GRPO from the start checkpoint with `estimator`: the trained model, mean reward and seconds per phase."""
    from transformers import PrinterCallback

    from diff_trainer.training.grpo import DiffusionGRPOTrainer
    from diff_trainer.training.rewards import load_reward

    model, tokenizer = load_start(args)
    trainer = DiffusionGRPOTrainer(
        model,
        [load_reward("arithmetic")],
        args=grpo_config(args, estimator, output_dir),
        train_dataset=prompts,
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)  # the table, not every step's log, goes to the results file
    trainer.train()
    steps = [entry for entry in trainer.state.log_history if "step_time" in entry]
    result = {name: statistics.mean(entry[f"time/{name}"] for entry in steps) for name in PHASES}
    result["step"] = statistics.mean(entry["step_time"] for entry in steps)
    result["reward"] = statistics.mean(entry["reward"] for entry in steps)
    result["model"] = trainer.model
    return result


def variance_rows(args, prompts) -> dict:
    """Per estimator: (shared-mask max |log-ratio|, Var at the ratio's level, Var per completion)."""
    import torch

    from diff_trainer.diffusion.elbo import monte_carlo_copies
    from diff_trainer.diffusion.policy_logps import draw_masks, mask_generators, score_draw
    from diff_trainer.sampling.masked import padded_position_ids
    from diff_trainer.sampling.settings import run_sampler, sampler_for
    from diff_trainer.training.grpo import encode_prompt

    model, tokenizer = load_start(args)
    model.eval()
    old = copy.deepcopy(model)
    config = sampler_for(model, tokenizer, gen_length=args.gen_length, temperature=1.0)
    prompt_ids = [
        encode_prompt(tokenizer, prompt)
        for prompt in prompts["prompt"][: args.variance_prompts]
        for _ in range(args.num_generations)
    ]
    with torch.no_grad():
        result = run_sampler(model, prompt_ids, config, seed=args.seed)
    input_ids, attention_mask = result.sequences, result.attention_mask
    completion_mask = attention_mask.bool().clone()
    completion_mask[:, : result.generation_start] = False
    for row, ids in enumerate(result.generated.tolist()):  # a completion ends at its first stop token
        ends = [k for k, token in enumerate(ids) if token in config.eos_ids]
        if ends:
            completion_mask[row, result.generation_start + ends[0] + 1 :] = False
    prompt_mask = attention_mask.bool() & ~completion_mask
    prompt_mask[:, result.generation_start :] = False
    rows = list(range(len(input_ids)))
    mask_token_id = config.mask_token_id

    def score(policy, estimator, draw):
        passes = draw.noisy_ids.shape[0] // len(input_ids)
        mask = monte_carlo_copies(attention_mask, passes)
        positions = padded_position_ids(mask)

        def logits_fn(noisy):
            return policy(input_ids=noisy, attention_mask=mask, position_ids=positions).logits

        return score_draw(estimator, logits_fn, input_ids, completion_mask, draw, shift=config.shift)

    table = {}
    for estimator in ESTIMATORS:
        scores, shared = [], 0.0
        for draw_index in range(args.draws):
            draw = draw_masks(
                estimator,
                input_ids,
                prompt_mask,
                completion_mask,
                mask_token_id,
                mask_generators(args.seed, 0, draw_index, rows),
                p_mask_prompt=args.p_mask_prompt,
                num_samples=args.mc_samples,
            )
            with torch.no_grad():
                current = score(model, estimator, draw)
                if draw_index == 0:
                    shared = (current - score(old, estimator, draw)).abs().max().item()
            scores.append(current)
        table[estimator] = (shared, *log_ratio_variances(estimator, torch.stack(scores), completion_mask))
    return table


def measure(args) -> tuple[float, list[list]]:
    """(the start's held-out exact match, one table row per estimator)."""
    import torch

    from diff_trainer.cli.grpo import load_prompts
    from diff_trainer.training.args.grpo import GRPODataArguments

    torch.set_num_threads(args.threads)
    train = load_prompts(GRPODataArguments(train_file=args.train_file, max_train_samples=args.train_problems), "<DFF>")
    test = load_prompts(GRPODataArguments(train_file=args.test_file, max_train_samples=args.eval_problems), "<DFF>")
    start_model, tokenizer = load_start(args)
    start = exact_match(start_model, tokenizer, test, args.gen_length)
    variances = variance_rows(args, test)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for estimator in ESTIMATORS:
            result = train_one(args, estimator, train, os.path.join(scratch, estimator))
            accuracy = exact_match(result["model"], tokenizer, test, args.gen_length)
            rows.append(
                [
                    estimator,
                    accuracy,
                    result["reward"],
                    *(result[name] for name in PHASES),
                    result["step"],
                    *variances[estimator],
                ]
            )
    return start, rows


HEADERS = [
    "estimator",
    "held-out exact match",
    "mean train reward",
    "rollout s/step",
    "scoring s/step",
    "backward s/step",
    "step s (TRL)",
    "shared masks: max abs log-ratio",
    "Var log-ratio (ratio level)",
    "Var log-ratio (completion)",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="untrained tiny model, 2 steps, 8 problems")
    parser.add_argument("--model", help="the start checkpoint (masked diffusion, trained on prompt<DFF>answer)")
    parser.add_argument("--data_dir", default="data/arithmetic", help="train.jsonl and test.jsonl with prompt/answer")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--prompts_per_step", type=int, default=8)
    parser.add_argument("--num_generations", type=int, default=8)
    parser.add_argument("--gen_length", type=int, default=4)
    parser.add_argument("--mc_samples", type=int, default=4, help="elbo: masked copies per completion")
    parser.add_argument("--p_mask_prompt", type=float, default=0.3, help="one_step: chance of masking a prompt token")
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--train_problems", type=int, default=None)
    parser.add_argument("--eval_problems", type=int, default=500)
    parser.add_argument("--variance_prompts", type=int, default=16)
    parser.add_argument("--draws", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    return parser


def settle(args, scratch: str):
    """Fill in the files of a run: --quick's tiny model and problems written to `scratch`, or --data_dir's."""
    if args.quick:
        args.model, args.train_file, args.test_file = write_quick_data(scratch)
        args.steps, args.prompts_per_step, args.num_generations, args.eval_problems = 2, 2, 4, 8
        args.variance_prompts, args.draws = 2, 4
    elif args.model is None:
        raise SystemExit("--model: the start checkpoint (e.g. outputs/grpo_sft of docs/grpo.md), or --quick.")
    else:
        args.train_file, args.test_file = (os.path.join(args.data_dir, f"{n}.jsonl") for n in ("train", "test"))
    return args


def main(argv=None):
    quiet()
    with tempfile.TemporaryDirectory() as scratch:
        args = settle(build_parser().parse_args(argv), scratch)
        with results_file("grpo", args.quick):
            print(machine_summary(args.threads))
            print(
                f"start {args.model}: {args.steps} steps of {args.prompts_per_step} prompts x {args.num_generations} "
                f"completions of {args.gen_length} tokens, learning rate {args.learning_rate}, beta {args.beta}, "
                f"elbo mc_samples {args.mc_samples}, one_step p_mask_prompt {args.p_mask_prompt}, seed {args.seed}; "
                f"variance: {args.variance_prompts} prompts x {args.num_generations} completions x {args.draws} draws"
            )
            start, rows = measure(args)
            print(f"held-out exact match at the start: {start:.3f} (first {args.eval_problems} problems, greedy)")
            print(markdown_table(HEADERS, rows))


if __name__ == "__main__":
    main()
