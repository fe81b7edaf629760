"""The digits data and loss shared by ``flax_nnx_digits.py`` and ``flax_linen_trainstate.py``.

scikit-learn's 1797 bundled 8x8 images (no download), split 80/20 with a fixed seed; the
training images are augmented with their one-pixel shifts and every image is standardised with
the training set's statistics.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def shifted(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The images and their four one-pixel shifts (up, down, left, right): 5x the data."""
    imgs = x.reshape(-1, 8, 8)
    out = [imgs]
    for axis, d in ((1, 1), (1, -1), (2, 1), (2, -1)):
        s = np.roll(imgs, d, axis=axis)
        edge = 0 if d == 1 else -1  # the row/column that wrapped around becomes blank
        if axis == 1:
            s[:, edge, :] = 0
        else:
            s[:, :, edge] = 0
        out.append(s)
    return np.concatenate(out).reshape(-1, 64), np.tile(y, len(out))


def load_data(seed: int) -> tuple[np.ndarray, ...]:
    """A stratified 80/20 split fixed by ``seed``; training images augmented by shifts.

    Features are standardised with the training set's mean and spread. Returns
    ``x_train, x_test, y_train, y_test`` (float32, int32).
    """
    digits = load_digits()
    x = digits.data.astype(np.float32) / 16.0
    y = digits.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    x_tr, y_tr = shifted(x_tr, y_tr)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0) + 0.1
    standardise = lambda a: ((a - mean) / std).astype(np.float32)  # noqa: E731
    return standardise(x_tr), standardise(x_te), y_tr, y_te


def batches(n: int, batch_size: int, epochs: int, seed: int) -> np.ndarray:
    """Indices ``[epochs, steps_per_epoch, batch_size]``, reshuffled every epoch (same for all)."""
    rng = np.random.default_rng(seed)
    steps = n // batch_size
    return np.stack([rng.permutation(n)[: steps * batch_size] for _ in range(epochs)]).reshape(
        epochs, steps, batch_size
    )
