"""diff-trainer: train diffusion language models with the HuggingFace Trainer."""

__version__ = "0.1.0"

from . import models  # noqa: E402,F401  registers the model classes and checkpoint layouts
