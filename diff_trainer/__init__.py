"""diff-trainer: train diffusion language models with the HuggingFace Trainer.

Importing the package loads nothing heavy, so the data scripts start without torch or transformers;
`import diff_trainer.models` registers the model classes and checkpoint layouts (every command that loads a model
imports it)."""

__version__ = "0.1.0"
