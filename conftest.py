"""Test configuration: strict JAX, several CPU devices, and doctest namespace.

Applied to ``tests/`` and to the docstring examples in ``gradtx/`` alike.
"""

import jax

# Before any computation initialises the backend: 8 CPU devices for sharding tests.
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

import gradtx  # noqa: E402


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace.update(jax=jax, jnp=jnp, gradtx=gradtx)
