"""Model classes and released-checkpoint layouts. Importing the package registers the DDiT and TimeConditionedLM
classes with the transformers Auto* factories and the LLaDA, Dream and SEDD layouts with `models.registry`."""

from . import conversion, ddit, sedd_checkpoint, time_conditioning  # noqa: F401
