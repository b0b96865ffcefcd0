"""Samplers: the masked-diffusion loop (`masked`), SEDD's τ-leaping loop (`sedd`), the settings of a checkpoint and
the dispatcher (`settings`), and pictures of the steps (`render`)."""
