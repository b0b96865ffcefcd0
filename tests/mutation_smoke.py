#!/usr/bin/env python
"""Plant small wrong formulas and wirings in a scratch copy of the repository and show that the tests catch each.

    python tests/mutation_smoke.py             # every mutation (~5-10 min on 2 cores)
    python tests/mutation_smoke.py --list      # what each mutation plants, and the tests it runs
    python tests/mutation_smoke.py --only elbo_weight --only prompt_dropout_padding

Not part of the default test run (pytest collects only test_*.py). Each mutation replaces one exact piece of source
text (it must occur exactly once, so a refactor that moves the code makes the mutation report "does not apply"
instead of silently testing nothing), runs the tests named for it with pytest -x, and restores the file. A mutation
is caught when those tests fail. Exit status 1 if any mutation survived or no longer applies.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from repo_copy import copy_repository


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    path: str
    original: str
    planted: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation(
        "word_share_distinct",
        "the word share divides by the distinct tokens instead of all of them",
        "diff_trainer/metrics/words.py",
        "sum(token in words for token in tokens) / len(tokens)",
        "sum(token in words for token in tokens) / len(set(tokens))",
        ("tests/metrics/test_words.py",),
    ),
    Mutation(
        "token_f1_distinct",
        "the token F1 counts the distinct common tokens, not each as often as both texts hold it",
        "diff_trainer/metrics/words.py",
        "common = sum((predicted & expected).values())",
        "common = len(set(predicted) & set(expected))",
        ("tests/metrics/test_words.py",),
    ),
    Mutation(
        "chat_summary_whole",
        "the chat corpus answers a summary question with the whole summary, not its first sentence",
        "data_scripts/make_chat_corpus.py",
        "return SENTENCE_END.split(topic.summary, 1)[0]",
        "return topic.summary",
        ("tests/data_scripts/test_make_chat_corpus.py",),
    ),
    Mutation(
        "linear_weight_dropped",
        "the 1/t loss weight of the linear schedule becomes 1",
        "diff_trainer/diffusion/schedules.py",
        "    def loss_weight(self, t):\n        return 1.0 / self.effective_time(t)",
        "    def loss_weight(self, t):\n        return torch.ones_like(t)",
        ("tests/objectives/test_masked.py::test_linear_weight_is_the_inverse_of_the_masking_rate",),
    ),
    Mutation(
        "sft_answer_length",
        "llada_sft divides each row by the block length instead of its answer length",
        "diff_trainer/diffusion/losses.py",
        "return 1.0 / maskable.sum(dim=1).clamp(min=1).float()",
        "return torch.full((maskable.shape[0],), 1.0 / maskable.shape[1], device=maskable.device)",
        ("tests/training/test_trainer.py::test_loss_of_one_batch_matches_hand_normalisation",),
    ),
    Mutation(
        "elbo_weight",
        "the ELBO term loses its L/l factor (LLaDA eq. 14)",
        "diff_trainer/diffusion/elbo.py",
        "return -(lengths / counts.clamp(min=1).float()) * masked_ce",
        "return -masked_ce",
        ("tests/training/test_trainer.py::test_eval_elbo_of_a_uniform_model_is_log_vocabulary_size",),
    ),
    Mutation(
        "annealing_ratio_inverted",
        "attention annealing opens future keys with probability 1 - step/N",
        "diff_trainer/diffusion/attention.py",
        "allowed = causal | (coin < ratio)",
        "allowed = causal | (coin < 1.0 - ratio)",
        ("tests/training/test_trainer.py::test_annealing_masks_used_in_training_open_future_keys_at_rate_step_over_n",),
    ),
    Mutation(
        "prompt_dropout_padding",
        "prompt dropout also masks the left padding",
        "diff_trainer/objectives/masked.py",
        "prompt = ~maskable & attention.bool()",
        "prompt = ~maskable",
        ("tests/objectives/test_masked.py::test_prompt_dropout_masks_whole_prompts_and_never_the_padding",),
    ),
    Mutation(
        "prefix_separators_shuffled",
        "--prefix_shuffle segments moves the separators with the keywords",
        "diff_trainer/objectives/masked.py",
        "pieces += self.segment_pieces(segment) + [(list(self.separator_ids), False)]",
        "pieces += self.segment_pieces(segment) + [(list(self.separator_ids), True)]",
        ("tests/objectives/test_masked.py::test_prefix_segments_are_permuted_and_nothing_else_moves",),
    ),
    Mutation(
        "random_length_off_by_one",
        "random-length truncation keeps one token more than drawn",
        "diff_trainer/diffusion/forward.py",
        "tail = torch.arange(length, device=labels.device).unsqueeze(0) >= kept.unsqueeze(1)",
        "tail = torch.arange(length, device=labels.device).unsqueeze(0) > kept.unsqueeze(1)",
        ("tests/objectives/test_masked.py::test_random_length_truncates_the_chosen_share_to_a_uniform_prefix",),
    ),
    Mutation(
        "causal_accuracy_unshifted",
        "the causal eval_accuracy compares position i with label i (no shift)",
        "diff_trainer/cli/train.py",
        "compute_metrics=token_accuracy_metrics(shift=True)",
        "compute_metrics=token_accuracy_metrics(shift=False)",
        ("tests/training/test_run_clm_diff.py::test_train_evaluate_and_resume",),
    ),
    Mutation(
        "random_remasking_by_confidence",
        "`random` remasking ranks by the predicted probability",
        "diff_trainer/sampling/masked.py",
        "return torch.rand(chosen.shape, generator=generator, dtype=torch.float64, device=chosen.device)",
        "return probs.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)",
        ("tests/sampling/test_masked.py::test_random_remasking_commits_each_position_first_equally_often",),
    ),
    Mutation(
        "cache_keeps_stale_window",
        "the cached forward also attends to the kept keys of the fed window",
        "diff_trainer/sampling/masked.py",
        "attention = torch.cat([self.attention_mask[rows] * ~in_window, fed_exists.long()], dim=1)",
        "attention = torch.cat([self.attention_mask[rows], fed_exists.long()], dim=1)",
        (
            "tests/sampling/test_masked.py::test_cached_logits_equal_a_forward_with_stale_keys_and_values_outside_the_window",
        ),
    ),
    Mutation(
        "rows_in_lockstep",
        "a row that completed its block waits instead of moving to its next block",
        "diff_trainer/sampling/masked.py",
        "            block[finished] += 1\n",
        "            block[finished] += int(complete.all())\n",
        ("tests/sampling/test_masked.py::test_rows_advance_through_their_blocks_independently_and_leave_when_done",),
    ),
    Mutation(
        "ddp_denominator",
        "under DDP each process divides by the whole step's denominator",
        "diff_trainer/training/trainer.py",
        "return num_items_in_batch.clamp(min=1) / self.args.world_size",
        "return num_items_in_batch.clamp(min=1)",
        ("tests/training/test_ddp.py::test_two_process_ddp_matches_one_process",),
    ),
    Mutation(
        "block_sees_own_clean_copy",
        "a noisy block also attends to the clean copy of itself (BD3-LM leak)",
        "diff_trainer/diffusion/block.py",
        "noisy_to_clean = ~query_clean & key_clean & (key_block < query_block)",
        "noisy_to_clean = ~query_clean & key_clean & (key_block <= query_block)",
        ("tests/diffusion/test_block.py::test_vectorised_pass_equals_a_loop_over_blocks",),
    ),
    Mutation(
        "block_time_shared",
        "every block of a row gets the row's one time t instead of its own t_b",
        "diff_trainer/diffusion/block.py",
        "t = sample_times(batch_size * num_blocks, antithetic=antithetic, generator=generator, device=device)",
        "t = sample_times(batch_size, antithetic=antithetic, generator=generator, device=device)"
        ".repeat_interleave(num_blocks)",
        ("tests/diffusion/test_block.py::test_block_times_are_stratified_over_every_block_of_the_batch",),
    ),
    Mutation(
        "block_mask_offset",
        "block b is masked with the probability of block b - 1 (weighted with its own t)",
        "diff_trainer/diffusion/block.py",
        "mask_prob.reshape(blocks), mask_token_id, generator)",
        "mask_prob.roll(1, dims=-1).reshape(blocks), mask_token_id, generator)",
        ("tests/diffusion/test_block.py::test_each_block_is_masked_with_its_own_probability",),
    ),
    Mutation(
        "block_cache_cropped_too_far",
        "the block sampler's shared cache is cropped to the furthest row's block start, not the nearest one",
        "diff_trainer/sampling/block.py",
        "self.cached = min(starts)",
        "self.cached = max(starts)",
        ("tests/sampling/test_block.py::test_cache_equals_recomputing_the_prefix",),
    ),
    Mutation(
        "block_dpo_weights_misplaced",
        "block DPO scores weight token k with the time of block k mod (number of blocks), not its own block's",
        "diff_trainer/objectives/block.py",
        'weights = drawn["loss_weight"].repeat_interleave(self.block_size, dim=1)',
        'weights = drawn["loss_weight"].repeat(1, self.block_size)',
        ("tests/training/test_dpo_block.py::test_block_masks_time_each_block_and_mask_only_the_response",),
    ),
    Mutation(
        "block_dpo_unweighted",
        "block DPO scores sum the masked tokens' cross-entropy without their blocks' weights",
        "diff_trainer/objectives/block.py",
        "return -(losses * weights).sum(dim=1).reshape(-1, num_samples)",
        "return -losses.sum(dim=1).reshape(-1, num_samples)",
        ("tests/training/test_dpo_block.py::test_a_score_by_hand",),
    ),
    Mutation(
        "block_isolation_noisy_half_only",
        "--isolate_documents restricts the noisy half of [x_t ; x0] only; the clean half sees across documents",
        "diff_trainer/objectives/block.py",
        "allowed = allowed & restriction.repeat(1, 1, 2, 2)",
        "allowed = allowed & torch.cat([restriction, torch.ones_like(restriction)], dim=2).repeat(1, 1, 1, 2)",
        ("tests/objectives/test_block.py::test_isolated_documents_of_a_packed_row_see_nothing_of_each_other",),
    ),
    Mutation(
        "dropout_kept",
        "run_diffusion_dpo ignores --disable_dropout",
        "diff_trainer/training/dpo.py",
        "        if args.disable_dropout:\n",
        "        if False:\n",
        ("tests/training/test_run_diffusion_dpo.py::test_disable_dropout_and_custom_column_names",),
    ),
    Mutation(
        "coupled_masks_prompt",
        "coupled-GRPO's mask pair also covers the prompt tokens",
        "diff_trainer/diffusion/policy_logps.py",
        "first, second, times = coupled_masks(completion_mask, generator)",
        "first, second, times = coupled_masks(completion_mask | prompt_mask, generator)",
        ("tests/diffusion/test_policy_logps.py::test_coupled_never_masks_prompt_tokens",),
    ),
    Mutation(
        "old_policy_other_masks",
        "each policy (current, old, reference) is scored on a mask draw of its own",
        "diff_trainer/diffusion/policy_logps.py",
        "    return [score_draw(estimator, logits_fn, input_ids, completion_mask, draw, shift=shift) for logits_fn in "
        "logits_fns]",
        "    return [score_draw(estimator, logits_fn, input_ids, completion_mask, draw_masks(estimator, input_ids, "
        "prompt_mask, completion_mask, mask_token_id, generator, p_mask_prompt=p_mask_prompt, "
        "num_samples=num_samples), shift=shift) for logits_fn in logits_fns]",
        (
            "tests/diffusion/test_policy_logps.py::"
            "test_identical_policies_on_shared_masks_give_ratio_one_zero_kl_and_zero_grpo_loss",
        ),
    ),
    Mutation(
        "advantage_not_per_group",
        "GRPO advantages are normalised over the whole batch instead of per group",
        "diff_trainer/diffusion/policy_losses.py",
        "grouped = rewards.reshape(-1, group_size)",
        "grouped = rewards.reshape(1, -1)",
        ("tests/diffusion/test_policy_losses.py::test_grpo_loss_equals_a_token_by_token_loop_with_clipping_and_kl",),
    ),
    Mutation(
        "grpo_first_iteration_masks",
        "a reused rollout is scored on its first iteration's masks every time",
        "diff_trainer/training/grpo.py",
        'self._mask_context = (int(inputs["rollout_step"][0]), iteration, ',
        'self._mask_context = (int(inputs["rollout_step"][0]), 0, ',
        ("tests/training/test_grpo.py::test_learning_rate_zero_scores_every_policy_alike_so_kl_is_zero_and_loss_zero",),
    ),
    Mutation(
        "error_printed_by_every_process",
        "every process of a distributed launch prints the error, not only the first to claim it",
        "diff_trainer/training/runner.py",
        "return store.add(key, 1) == 1",
        "return store.add(key, 1) >= 1",
        ("tests/training/test_runner.py::test_only_the_first_process_of_a_launch_reports_its_error",),
    ),
    Mutation(
        "trace_padding_as_text",
        "the browser trace draws the EOS padding after the first EOS as literal end-of-text tokens",
        "web/js/trace.js",
        "if (ended) return",
        "if (ended && false) return",
        ("tests/test_web_trace.py",),
    ),
    Mutation(
        "harness_chat_end_of_turn",
        "the harness's generations no longer stop at the chat template's end-of-turn token",
        "diff_trainer/eval/harness.py",
        "stops = stop_ids(self.diffusion_config, self.tokenizer, self.end_of_turn_ids())",
        "stops = stop_ids(self.diffusion_config, self.tokenizer)",
        ("tests/cli/test_lm_eval_chat.py::test_generation_stops_at_the_end_of_turn_token",),
    ),
    Mutation(
        "harness_chat_double_bos",
        "the harness puts a BOS before a chat context that already starts with the template's BOS",
        "diff_trainer/eval/harness.py",
        "        if prefix and context.startswith(self.tokenizer.bos_token):\n            return []\n",
        "",
        ("tests/eval/test_harness.py::test_a_chat_context_that_starts_with_bos_gets_no_second_one",),
    ),
    Mutation(
        "grpo_rollouts_per_process",
        "each process seeds its rollouts by its rank, not by the rollouts' global index",
        "diff_trainer/training/grpo.py",
        "np.random.SeedSequence([self.args.seed, self._step, rollouts[start]])",
        "np.random.SeedSequence([self.args.seed, self._step, self.accelerator.process_index])",
        ("tests/training/test_grpo.py::test_two_processes_give_the_first_step_of_one_process_with_twice_the_batch",),
    ),
    Mutation(
        "grpo_block_columns",
        "a block-diffusion rollout is scored with TRL's left padding in front, its blocks misaligned",
        "diff_trainer/training/grpo.py",
        "            order = left_aligned(attention_mask)\n",
        "            order = torch.arange(length).expand_as(attention_mask)\n",
        ("tests/training/test_grpo.py::test_block_scores_are_each_row_scored_alone_from_position_zero",),
    ),
]


def run_mutation(mutation: Mutation, scratch: Path) -> tuple[str, float, str]:
    """(verdict, seconds, last lines of pytest's output) for one mutation applied to the scratch copy."""
    path = scratch / mutation.path
    source = path.read_text(encoding="utf-8")
    if source.count(mutation.original) != 1:
        return "DOES NOT APPLY", 0.0, f"{mutation.path}: the original text occurs {source.count(mutation.original)}×"
    path.write_text(source.replace(mutation.original, mutation.planted), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(scratch), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutation.tests],
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        path.write_text(source, encoding="utf-8")
    seconds = time.perf_counter() - start
    tail = "\n".join(result.stdout.strip().splitlines()[-3:])
    if result.returncode == 1:
        return "caught", seconds, tail
    if result.returncode == 0:
        return "SURVIVED", seconds, tail
    return f"ERROR (pytest exit {result.returncode})", seconds, tail + result.stderr[-500:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only", action="append", choices=[m.name for m in MUTATIONS], help="run only this mutation (repeatable)"
    )
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        for mutation in chosen:
            print(f"{mutation.name}: {mutation.what}\n    {mutation.path}; tests: {' '.join(mutation.tests)}")
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="mutation-smoke-") as directory:
        scratch = Path(directory)
        copy_repository(scratch)
        for mutation in chosen:
            verdict, seconds, tail = run_mutation(mutation, scratch)
            rows.append((mutation, verdict, seconds))
            print(
                f"{mutation.name}: {verdict} ({seconds:.0f} s)\n    {tail.replace(chr(10), chr(10) + '    ')}",
                flush=True,
            )
    print("\n| mutation | what it plants | file | result | seconds |\n|---|---|---|---|---|")
    for mutation, verdict, seconds in rows:
        print(f"| {mutation.name} | {mutation.what} | {mutation.path} | {verdict} | {seconds:.0f} |")
    caught = sum(verdict == "caught" for _, verdict, _ in rows)
    print(f"\n{caught} of {len(rows)} planted bugs caught.")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
