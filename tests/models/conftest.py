"""Fixtures: tiny checkpoints in the published LLaDA and Dream layouts (see published_layouts.py)."""

import pytest

from models.published_layouts import write_dream_checkpoint, write_llada_checkpoint


@pytest.fixture(scope="session")
def llada_checkpoint(tmp_path_factory):
    """(directory, stored weights) of a tiny LLaDA checkpoint in two shards with an index, as on the hub."""
    directory = tmp_path_factory.mktemp("llada") / "LLaDA-8B-Instruct"
    return directory, write_llada_checkpoint(directory, shards=2)


@pytest.fixture(scope="session")
def dream_checkpoint(tmp_path_factory):
    """(directory, stored weights) of a tiny Dream checkpoint in two shards with an index, as on the hub."""
    directory = tmp_path_factory.mktemp("dream") / "Dream-v0-Instruct-7B"
    return directory, write_dream_checkpoint(directory, shards=2)
