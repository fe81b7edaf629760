"""The packed views compile like per-leaf code on XLA:CPU: equal-shape layers share kernels.

XLA:CPU compiles one kernel per distinct fused computation. A view at a constant offset fused
into its reader made every layer's fusions distinct (compile time growing with depth); the
views' offsets are now runtime values (``gradtx._core.packed_views``), so the number of
distinct fused computations of a packed MLP's training step does not grow with its depth.
Measured on the compiled HLO (deterministic), not by timing.
"""

from __future__ import annotations

import hashlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradtx

_META = re.compile(r",?\s*metadata=\{[^}]*\}")
_NAME = re.compile(r"%[\w.\-]+")


def _distinct_fusions(text: str) -> int:
    bodies, cur = set(), None
    for line in text.splitlines():
        if re.match(r"^%?fused_computation[\w.\-]* ", line) or re.match(
            r"^%[\w.\-]*fus[\w.\-]* \(", line
        ):
            cur = []
        elif cur is not None:
            if line.startswith("}"):
                bodies.add(hashlib.sha1("\n".join(cur).encode()).hexdigest())
                cur = None
            else:
                cur.append(_NAME.sub("%", _META.sub("", line)).strip())
    return len(bodies)


def _mlp(depth: int) -> dict:
    rng = np.random.default_rng(0)
    return {
        f"l{i:02d}": {
            "w": jnp.asarray(rng.standard_normal((16, 16), np.float32) * 0.2),
            "b": jnp.asarray(rng.standard_normal(16, np.float32) * 0.1),
        }
        for i in range(depth)
    }


def _loss(p: dict, x: jax.Array) -> jax.Array:
    for i in range(len(p)):
        x = x + jnp.tanh(x @ p[f"l{i:02d}"]["w"] + p[f"l{i:02d}"]["b"][None, :])
    return jnp.mean(x**2)


def _compiled(depth: int, packed: bool) -> tuple[str, jax.Array, dict]:
    p = _mlp(depth)
    tree = gradtx.pack(p, threshold=None) if packed else p
    x = jnp.linspace(-1.0, 1.0, 8 * 16, dtype=jnp.float32).reshape(8, 16)

    def f(q):
        return jax.value_and_grad(lambda r: _loss(gradtx.unpack(r) if packed else r, x))(q)

    fn = jax.jit(f)
    loss, grads = fn(tree)
    grads = gradtx.unpack(grads) if packed else grads
    return fn.lower(tree).compile().as_text(), loss, grads


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU lowering is the one measured")
def test_packed_forward_and_backward_share_kernels_across_layers():
    shallow, _, _ = _compiled(6, packed=True)
    deep, loss, grads = _compiled(12, packed=True)
    per_leaf, ref_loss, ref_grads = _compiled(12, packed=False)
    # twice the layers, (almost) no new distinct fused computations; per leaf is the yardstick
    assert _distinct_fusions(deep) <= _distinct_fusions(shallow) + 2
    assert _distinct_fusions(deep) <= _distinct_fusions(per_leaf) + 6
    # and the same values as the per-leaf program, bit for bit
    np.testing.assert_array_equal(loss, ref_loss)
    jax.tree_util.tree_map(np.testing.assert_array_equal, grads, ref_grads)
