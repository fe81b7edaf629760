"""The models of ``model_bench.py``: params, non-trained state, a loss and a fixed batch.

Each builder takes ``quick`` (tiny sizes, for the smoke test) and returns a :class:`Model`
whose ``loss(params, rest, *batch)`` returns ``(loss, new_rest)``: ``rest`` is the state the
optimizer does not see (BatchNorm's running statistics), threaded through the step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass
class Model:
    label: str
    params: Any
    rest: Any
    loss: Callable[..., tuple[jax.Array, Any]]
    batch: tuple


def _dense(rng: np.random.Generator, n_in: int, n_out: int) -> dict:
    """A kernel and a bias, drawn by NumPy (no per-leaf device program to compile)."""
    w = rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)
    return {"w": jnp.asarray(w, jnp.float32), "b": jnp.zeros(n_out, jnp.float32)}


def _normal(seed: int, shape: tuple) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def mlp_stack(layers: int, width: int, batch: int) -> Model:
    """``layers`` residual tanh layers ``h += tanh(h W + b)`` of ``width``, a square loss."""
    rng = np.random.default_rng(0)
    params = [_dense(rng, width, width) for _ in range(layers)]
    x = _normal(1, (batch, width))

    def loss(p: list, rest: Any, x: jax.Array, y: jax.Array) -> tuple:
        h = x
        for layer in p:
            h = h + jnp.tanh(h @ layer["w"] + layer["b"])
        return jnp.mean((h - y) ** 2), rest

    return Model(f"MLP: {layers} layers of {width}", params, None, loss, (x, jnp.sin(x)))


def deep(quick: bool) -> Model:
    """A deep residual MLP: 200 layers of width 32 (400 leaves)."""
    model = mlp_stack(8, 8, 16) if quick else mlp_stack(200, 32, 128)
    model.label = "deep " + model.label
    return model


def pinn(quick: bool) -> Model:
    """A PINN for Burgers' equation ``u_t + u u_x = ν u_xx`` on ``[-1, 1] × [0, 1]``.

    An MLP ``(x, t) -> u`` of 24 tanh layers of width 32, each with a trained scale ``a``
    (adaptive activation ``tanh(a (h W + b))``, Jagtap et al. 2020): 3 leaves a layer, one a
    scalar. The loss is the mean squared residual at collocation points (first and second
    derivatives by forward-mode AD) plus the initial condition ``u(x, 0) = -sin(π x)``.
    """
    layers, width, n = (3, 8, 16) if quick else (24, 32, 256)
    rng = np.random.default_rng(0)
    dims = [2] + [width] * layers
    params = {
        "hidden": [
            dict(_dense(rng, a, b), a=jnp.ones((), jnp.float32))
            for a, b in zip(dims[:-1], dims[1:])
        ],
        "out": _dense(rng, width, 1),
    }
    nu = 0.01 / np.pi
    xt = jnp.asarray(rng.uniform([-1.0, 0.0], [1.0, 1.0], (n, 2)), jnp.float32)
    x0 = jnp.linspace(-1.0, 1.0, n // 4)

    def u(p: dict, z: jax.Array) -> jax.Array:
        h = z
        for layer in p["hidden"]:
            h = jnp.tanh(layer["a"] * (h @ layer["w"] + layer["b"]))
        return (h @ p["out"]["w"] + p["out"]["b"])[0]

    def residual(p: dict, z: jax.Array) -> jax.Array:
        ex, et = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
        ux_fn = lambda z: jax.jvp(lambda z: u(p, z), (z,), (ex,))[1]  # noqa: E731
        val, ux = jax.jvp(lambda z: u(p, z), (z,), (ex,))
        ut = jax.jvp(lambda z: u(p, z), (z,), (et,))[1]
        uxx = jax.jvp(ux_fn, (z,), (ex,))[1]
        return ut + val * ux - nu * uxx

    def loss(p: dict, rest: Any, xt: jax.Array, x0: jax.Array) -> tuple:
        r = jax.vmap(lambda z: residual(p, z))(xt)
        init = jax.vmap(lambda x: u(p, jnp.stack([x, jnp.zeros_like(x)])))(x0)
        return jnp.mean(r**2) + jnp.mean((init + jnp.sin(np.pi * x0)) ** 2), rest

    return Model(
        f"PINN (Burgers): {layers} layers of {width}, scales", params, None, loss, (xt, x0)
    )


def _nnx_split(model: Any, *filters: Any) -> tuple:
    from flax import nnx  # noqa: PLC0415

    return nnx.split(model, *filters)


def resnet(quick: bool) -> Model:
    """A small ResNet (flax nnx): a 3×3 stem, 3 stages of 2 basic blocks (16/32/64 channels,
    stride 2 between stages, 1×1 projections), BatchNorm, global average pool, 10 classes.
    The running statistics are ``nnx.BatchStat``: outside the optimizer, updated each step."""
    from flax import nnx  # noqa: PLC0415

    widths, blocks, size, batch = ((4, 8), 1, 8, 4) if quick else ((16, 32, 64), 2, 16, 32)

    class Block(nnx.Module):
        def __init__(self, c_in: int, c: int, stride: int, rngs: nnx.Rngs) -> None:
            self.conv1 = nnx.Conv(c_in, c, (3, 3), strides=stride, use_bias=False, rngs=rngs)
            self.bn1 = nnx.BatchNorm(c, rngs=rngs)
            self.conv2 = nnx.Conv(c, c, (3, 3), use_bias=False, rngs=rngs)
            self.bn2 = nnx.BatchNorm(c, rngs=rngs)
            if stride != 1 or c_in != c:  # a 1×1 projection of the skip connection
                self.proj = nnx.Conv(c_in, c, (1, 1), strides=stride, use_bias=False, rngs=rngs)
                self.bn_proj = nnx.BatchNorm(c, rngs=rngs)
            else:
                self.proj = None

        def __call__(self, x: jax.Array) -> jax.Array:
            h = jax.nn.relu(self.bn1(self.conv1(x)))
            h = self.bn2(self.conv2(h))
            skip = x if self.proj is None else self.bn_proj(self.proj(x))
            return jax.nn.relu(h + skip)

    class Net(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.stem = nnx.Conv(3, widths[0], (3, 3), use_bias=False, rngs=rngs)
            self.bn = nnx.BatchNorm(widths[0], rngs=rngs)
            layers, c_in = [], widths[0]
            for i, c in enumerate(widths):
                for j in range(blocks):
                    layers.append(Block(c_in, c, 2 if (i > 0 and j == 0) else 1, rngs))
                    c_in = c
            self.blocks = nnx.List(layers)
            self.head = nnx.Linear(c_in, 10, rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            h = jax.nn.relu(self.bn(self.stem(x)))
            for blk in self.blocks:
                h = blk(h)
            return self.head(h.mean(axis=(1, 2)))

    graphdef, params, stats = _nnx_split(Net(nnx.Rngs(0)), nnx.Param, nnx.BatchStat)
    images = _normal(1, (batch, size, size, 3))
    labels = jnp.asarray(np.random.default_rng(2).integers(0, 10, batch), jnp.int32)

    def loss(p: Any, stats: Any, images: jax.Array, labels: jax.Array) -> tuple:
        model = nnx.merge(graphdef, p, stats, copy=True)  # variables of this trace
        logits = model(images)
        new_stats = nnx.state(model, nnx.BatchStat)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new_stats

    label = f"ResNet (nnx, BatchNorm): {len(widths)}×{blocks} blocks, {size}×{size} images"
    return Model(label, params, stats, loss, (images, labels))


def transformer(quick: bool) -> Model:
    """A decoder-only transformer (flax nnx): 8 pre-LN blocks (``nnx.MultiHeadAttention``,
    d = 64, 4 heads, causal; GELU MLP of 4d), tied embedding of a 512-token vocabulary,
    sequences of 32: 16 leaves a block, 131 in all."""
    from flax import nnx  # noqa: PLC0415

    n_layers, d, heads, vocab, (b, t) = (
        (2, 16, 2, 32, (2, 9)) if quick else (8, 64, 4, 512, (8, 33))
    )

    class Block(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.ln1 = nnx.LayerNorm(d, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(heads, d, decode=False, keep_rngs=False, rngs=rngs)
            self.ln2 = nnx.LayerNorm(d, rngs=rngs)
            self.mlp = nnx.Sequential(
                nnx.Linear(d, 4 * d, rngs=rngs), jax.nn.gelu, nnx.Linear(4 * d, d, rngs=rngs)
            )

        def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
            x = x + self.attn(self.ln1(x), mask=mask)
            return x + self.mlp(self.ln2(x))

    class LM(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.embed = nnx.Embed(vocab, d, rngs=rngs)
            self.blocks = nnx.List([Block(rngs) for _ in range(n_layers)])
            self.ln = nnx.LayerNorm(d, rngs=rngs)

        def __call__(self, tok: jax.Array) -> jax.Array:
            x = self.embed(tok)
            mask = nnx.make_causal_mask(tok)
            for blk in self.blocks:
                x = blk(x, mask)
            return self.embed.attend(self.ln(x))

    graphdef, params, rest = _nnx_split(LM(nnx.Rngs(0)), nnx.Param, ...)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, vocab, (b, t)), jnp.int32)

    def loss(p: Any, rest: Any, tok: jax.Array) -> tuple:
        logits = nnx.merge(graphdef, p, rest)(tok[:, :-1])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, tok[:, 1:])
        return ce.mean(), rest

    label = f"transformer (nnx): {n_layers} layers, d={d}, {heads} heads, vocab {vocab}"
    return Model(label, params, rest, loss, (tokens,))


def many(quick: bool, experts: int = 2500) -> Model:
    """2,500 small experts, each a ``(8, 8)`` kernel and an ``(8,)`` bias kept as separate leaves
    (5,000 leaves), applied to the input through one stacked einsum and summed."""
    experts, d, batch = (16, 4, 8) if quick else (experts, 8, 64)
    rng = np.random.default_rng(0)
    params = [_dense(rng, d, d) for _ in range(experts)]
    x = _normal(1, (batch, d))

    def loss(p: list, rest: Any, x: jax.Array, y: jax.Array) -> tuple:
        w = jnp.stack([e["w"] for e in p])
        b = jnp.stack([e["b"] for e in p])
        h = jnp.tanh(jnp.einsum("ni,eij->nej", x, w) + b).mean(axis=1)
        return jnp.mean((h - y) ** 2), rest

    label = f"many leaves: {experts:,} experts of {d}×{d} + {d}"
    return Model(label, params, None, loss, (x, jnp.sin(x)))


MODELS: dict[str, Callable[[bool], Model]] = {
    "deep": deep,
    "pinn": pinn,
    "resnet": resnet,
    "transformer": transformer,
    "many": many,
}
