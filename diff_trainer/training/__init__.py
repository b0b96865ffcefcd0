"""Training: the trainers (diffusion, VRPO / DPO), the model to train, argument groups, checkpoints, sharding, run
plumbing."""
