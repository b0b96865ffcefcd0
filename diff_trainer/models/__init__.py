"""Released diffusion LMs (LLaDA, Dream) mapped onto native transformers models: see `conversion`."""
