"""Fingerprints of the lowered programs of adamw and the clip chain, per leaf and packed.

Usage: ``python benchmarks/hlo_fingerprint.py [CHECKOUT]`` (default: this repository). Run it
on two checkouts (e.g. ``git worktree add /tmp/old <rev>``) to show that a change to the code's
organisation left the jitted steps the same: equal fingerprints mean byte-identical StableHLO
(source locations stripped), so equal speed. Prints ``name packed sha1 length`` per program.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys

ROOT = os.path.abspath(
    sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(__file__))
)
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import gradtx  # noqa: E402

assert gradtx.__file__.startswith(ROOT), gradtx.__file__


def main() -> None:
    params = {"w": jnp.ones((64, 32)), "b": jnp.zeros(32), "e": jnp.ones((10, 8))}
    schedule = gradtx.schedules.warmup_cosine_decay(0.0, 1e-3, 10, 100)
    chains = {
        "adamw": gradtx.adamw(1e-3),
        "clip+adamw+sched": gradtx.chain(gradtx.clip_by_global_norm(1.0), gradtx.adamw(schedule)),
    }
    for name, tx in chains.items():
        for packed in (False, True):
            p = gradtx.pack(params, threshold=None) if packed else params

            def step(p, s, g, tx=tx):
                u, s = tx.update(g, s, p)
                return gradtx.apply_updates(p, u), s

            text = jax.jit(step).lower(p, tx.init(p), p).as_text()
            text = re.sub(r"#?loc\d*(\([^)]*\))?", "", text)
            digest = hashlib.sha1(text.encode()).hexdigest()[:12]
            print(name, "packed" if packed else "per-leaf", digest, len(text))


if __name__ == "__main__":
    main()
