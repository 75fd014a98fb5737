"""Fixtures shared by several test files."""

import pytest

from cocu.curation.encoder import FrozenClip, load_encoder


@pytest.fixture(scope="session")
def encoder() -> FrozenClip:
    """The random-weight plumbing CLIP (``random:clip-tiny``, seed 0); tests read it, none changes it."""
    return load_encoder("random:clip-tiny")
