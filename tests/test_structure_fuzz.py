"""The kit's structural checks on hypothesis-generated parameter trees.

Trees nest dicts, lists, tuples and a named tuple (empty ones too) around ``None`` leaves and
arrays of 0 to 2 small dimensions in float32, bfloat16 and float16, mixed within a tree.
Examples are derandomized (a fixed seed) and bounded so the suite stays fast.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradtx
from gradtx.testing import KitPair, check_abstract_init, check_stability, check_structure

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


def _array(shape: tuple[int, ...], dtype: Any) -> jax.Array:
    n = int(np.prod(shape))
    return jnp.asarray(np.linspace(-1.0, 1.5, n).reshape(shape).astype(np.dtype(dtype)))


arrays = st.builds(
    _array,
    st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple),
    st.sampled_from(DTYPES),
)
leaves = st.one_of(arrays, arrays, st.none())
keys = st.sampled_from(["a", "b", "kernel", "bias", "z"])


def _containers(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        st.dictionaries(keys, children, max_size=3),
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.builds(KitPair, children, children),
    )


# A top-level None is left out: ``update(g, s, params=None)`` means "no params given".
trees = st.recursive(leaves, _containers, max_leaves=6).filter(lambda t: t is not None)


def _decay_mask(params: Any) -> Any:
    return jax.tree_util.tree_map(lambda p: np.ndim(p) >= 2, params)


TRANSFORMATIONS = {
    "sgd_momentum": lambda: gradtx.sgd(0.1, momentum=0.9),
    "adam": lambda: gradtx.adam(1e-3),
    "adafactor_factored": lambda: gradtx.adafactor(min_dim_size_to_factor=2, momentum=0.9),
    "clip_lamb": lambda: gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.lamb(1e-3)),
    "lion_masked": lambda: gradtx.lion(1e-4, mask=_decay_mask),
}


@pytest.mark.parametrize("make", TRANSFORMATIONS.values(), ids=TRANSFORMATIONS.keys())
@settings(
    max_examples=15,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(params=trees)
def test_structural_checks_on_generated_trees(make, params):
    tx = make()
    check_structure(tx, params, zoo=False)
    check_stability(tx, params)
    check_abstract_init(tx, params)
