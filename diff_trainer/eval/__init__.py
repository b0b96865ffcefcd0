"""Benchmark evaluation through EleutherAI's lm-evaluation-harness (the `[eval]` extra)."""
