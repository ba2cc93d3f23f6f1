"""Test configuration: 4 forced CPU devices (for sharding tests) and strict numerics."""

import os

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAXLINEAGE_NO_PROGRESS", "1")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """The TINY zoo (2 parents, 4 children, 2 independents), built once per test session."""
    from jaxlineage import zoo

    return zoo.build(zoo.TINY, tmp_path_factory.mktemp("tiny_zoo"), progress=False)
