"""Plots every schedule of ``gradtx.schedules`` into one figure (docs/img/schedules.png).

Usage: ``python tools/plot_schedules.py [OUT.png]``. ``EXAMPLES`` holds one configuration per
factory (optax's names that are the same object as a gradtx factory share its entry and get no
panel of their own); ``tests/test_docs_api.py`` checks that it covers every public factory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import gradtx.schedules as gs

STEPS = 1000

#: factory name -> (schedule, what the panel shows)
EXAMPLES = {
    "constant": (gs.constant(1.0), "constant(1.0)"),
    "linear": (gs.linear(1.0, 0.1, 800, 100), "linear(1, 0.1, 800, begin=100)"),
    "polynomial": (gs.polynomial(1.0, 0.0, 2.0, 1000), "polynomial(1, 0, power=2, 1000)"),
    "exponential_decay": (
        gs.exponential_decay(1.0, 100, 0.7, staircase=True),
        "exponential_decay(1, 100, 0.7, staircase)",
    ),
    "piecewise_constant": (
        gs.piecewise_constant(1.0, {300: 0.5, 700: 0.2}),
        "piecewise_constant(1, {300: .5, 700: .2})",
    ),
    "cosine_decay": (gs.cosine_decay(1.0, 1000, alpha=0.1), "cosine_decay(1, 1000, alpha=0.1)"),
    "warmup_cosine_decay": (
        gs.warmup_cosine_decay(0.0, 1.0, 100, 1000, 0.05),
        "warmup_cosine_decay(0, 1, 100, 1000, 0.05)",
    ),
    "warmup_constant": (gs.warmup_constant(0.0, 1.0, 200), "warmup_constant(0, 1, 200)"),
    "warmup_stable_decay": (
        gs.warmup_stable_decay(0.0, 1.0, 100, 600, 300, decay_type="cosine"),
        "wsd(0, 1, 100, 600, 300, cosine)",
    ),
    "wsd": (gs.wsd(0.0, 1.0, 100, 600, 300, decay_type="sqrt"), "wsd(..., decay_type='sqrt')"),
    "inverse_sqrt": (gs.inverse_sqrt(1.0, 100), "inverse_sqrt(1, warmup_steps=100)"),
    "one_cycle": (gs.one_cycle(1000, 1.0), "one_cycle(1000, 1)"),
    "cyclic_triangular": (
        gs.cyclic_triangular(0.1, 1.0, 100, 150, mode="triangular2"),
        "cyclic_triangular(0.1, 1, 100, 150, triangular2)",
    ),
    "cosine_restarts": (gs.cosine_restarts(1.0, 100, 2, 0.05), "cosine_restarts(1, 100, 2, 0.05)"),
    "sgdr": (gs.sgdr(1.0, 250), "sgdr(1, 250)"),
    "join_schedules": (
        gs.join_schedules((gs.linear(0.0, 1.0, 100), gs.cosine_decay(1.0, 900)), (100,)),
        "join_schedules((linear, cosine_decay), (100,))",
    ),
    # optax's names that are factories of their own (the others are gradtx's objects, below)
    "piecewise_interpolate_schedule": (
        gs.piecewise_interpolate_schedule("cosine", 1.0, {300: 0.2, 600: 4.0}),
        "piecewise_interpolate_schedule('cosine', 1, {300: .2, 600: 4})",
    ),
    "warmup_exponential_decay_schedule": (
        gs.warmup_exponential_decay_schedule(0.0, 1.0, 100, 200, 0.5),
        "warmup_exponential_decay_schedule(0, 1, 100, 200, 0.5)",
    ),
    "sgdr_schedule": (
        gs.sgdr_schedule(
            [dict(init_value=0.0, peak_value=1.0, warmup_steps=50, decay_steps=400)] * 2
            + [dict(init_value=0.0, peak_value=0.5, warmup_steps=20, decay_steps=200)]
        ),
        "sgdr_schedule([400, 400, 200 steps])",
    ),
    "cosine_onecycle_schedule": (
        gs.cosine_onecycle_schedule(1000, 1.0),
        "cosine_onecycle_schedule(1000, 1) (optax's)",
    ),
    "linear_onecycle_schedule": (
        gs.linear_onecycle_schedule(1000, 1.0),
        "linear_onecycle_schedule(1000, 1)",
    ),
}

#: optax names that are the same object as a gradtx factory: same curve, no panel of their own.
ALIASES = {
    name: other
    for name in gs.OPTAX_NAMES
    for other in list(EXAMPLES)
    if name != other and getattr(gs, name) is getattr(gs, other)
}
EXAMPLES.update({name: EXAMPLES[other] for name, other in ALIASES.items()})
#: the names plotted, one panel each
PANELS = [name for name in EXAMPLES if name not in ALIASES]


def curves() -> dict[str, np.ndarray]:
    """Each example evaluated at steps 0..STEPS-1 (a traced int32 step, under jit and vmap)."""
    steps = jnp.arange(STEPS, dtype=jnp.int32)
    return {
        name: np.asarray(jax.jit(jax.vmap(sched))(steps)) for name, (sched, _) in EXAMPLES.items()
    }


def main(argv: list[str] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else Path(__file__).parent.parent / "docs/img/schedules.png")
    values = {name: ys for name, ys in curves().items() if name in PANELS}
    cols = 4
    rows = -(-len(values) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.4 * rows), sharex=True)
    for ax, (name, ys) in zip(axes.flat, values.items()):
        ax.plot(np.arange(STEPS), ys, lw=1.5)
        ax.set_title(EXAMPLES[name][1], fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(values) :]:
        ax.axis("off")
    fig.supxlabel("step (updates already applied)")
    fig.supylabel("value")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(main())
