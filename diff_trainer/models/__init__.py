"""Model classes and released-checkpoint layouts; importing a module registers its classes with the transformers
Auto* factories (DDiT) or its loader with `modeling.CHECKPOINT_LOADERS` (SEDD, LLaDA, Dream: see `conversion`)."""

from . import ddit, sedd_checkpoint, time_conditioning  # noqa: F401
