"""Model classes; importing a module registers its classes with the transformers Auto* factories."""

from . import ddit, sedd_checkpoint, time_conditioning  # noqa: F401
