"""diff-trainer: train diffusion language models with the HuggingFace Trainer."""

__version__ = "0.1.0"
