"""Argument groups of the training commands, one file each: model, data, run (shared), diffusion, dpo; `parsing`
reads a config file and the command line into them."""
