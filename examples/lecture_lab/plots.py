"""The lab's figures (matplotlib with the Agg backend: files only, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .valley import Valley  # noqa: E402

STYLE = {
    "gd_large_lr": ("GD, η > 2/b", "tab:red"),
    "gd_small_lr": ("GD, η < 2/b", "tab:brown"),
    "adagrad_rms": ("Adagrad, RMS (lecture), const η", "tab:blue"),
    "adagrad_sum": ("Adagrad, sum (textbook)", "tab:cyan"),
    "rmsprop": ("RMSProp", "tab:green"),
    "adam": ("Adam", "tab:purple"),
    "with_decay": ("Adagrad RMS + decay", "tab:orange"),
    "with_warmup": ("Adagrad RMS + warm-up", "tab:olive"),
    "with_cosine_decay": ("Adagrad RMS + cosine decay", "tab:gray"),
}


def _thin(n: int, dense: int = 2000, stride: int = 11) -> np.ndarray:
    """Indices for plotting: every step at first, then every ``stride``-th (odd, so that a
    period-2 oscillation keeps showing both signs)."""
    return np.unique(np.concatenate([np.arange(min(n, dense)), np.arange(0, n, stride), [n - 1]]))


def _envelope(v: np.ndarray, dense: int = 2000, block: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) for plotting a long positive series: every step at first, then the
    maximum of each block of ``block`` steps (so that no spike is lost between samples)."""
    head = np.arange(min(len(v), dense))
    rest = v[len(head) :]
    m = len(rest) // block
    if m == 0:
        return np.arange(len(v)), v
    tail = rest[: m * block].reshape(m, block).max(axis=1)
    steps = len(head) + block * np.arange(m) + block // 2
    return np.concatenate([head, steps]), np.concatenate([v[head], tail])


def _finite(p: np.ndarray) -> np.ndarray:
    ok = np.all(np.isfinite(p), axis=1) & (np.abs(p).max(axis=1) < 1e6)
    return p[: int(np.argmin(ok))] if not ok.all() else p


def _save(fig: Any, path: Path) -> str:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def valley_trajectories(valley: Valley, recs: dict, summary: dict, out: Path) -> str:
    """Contours and every trajectory; right: the floor around the burst."""
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(14, 5.5), width_ratios=[1.6, 1])
    x0, y0 = valley.start
    xs = np.linspace(-0.05 * x0, 1.05 * x0, 400)
    ys = np.linspace(-1.3 * y0, 1.3 * y0, 400)
    gx, gy = np.meshgrid(xs, ys)
    f = valley.loss(np.stack([gx, gy], -1))
    levels = np.geomspace(max(f.min(), 1e-2) * 10, f.max(), 14)
    for a in (ax, zoom):
        a.contour(gx, gy, f, levels=levels, colors="0.8", linewidths=0.7)
    for name, rec in recs.items():
        label, color = STYLE.get(name, (name, None))
        p = _finite(rec["params"])
        if name == "gd_large_lr":
            p = p[:6]  # it leaves the picture after a few steps
        idx = _thin(len(p))
        front = name == "adagrad_rms"  # the burst on top; RMSProp's ±η/2 zigzag faint
        alpha = 0.35 if name == "rmsprop" else 1.0
        ax.plot(
            p[idx, 0],
            p[idx, 1],
            lw=0.8,
            color=color,
            label=label,
            alpha=alpha,
            zorder=3 if front else 2,
        )
    ax.plot([x0], [y0], "k*", ms=10)
    ax.plot([0], [0], "k+", ms=12)
    ax.set(xlim=(xs[0], xs[-1]), ylim=(ys[0], ys[-1]), xlabel=f"x (flat floor, a = {valley.a:g})")
    ax.set_ylabel(f"y (steep walls, b = {valley.b:g})")
    ax.set_title(f"Narrow valley, condition number {valley.b / valley.a:.0e} (axes not to scale)")
    ax.legend(fontsize=7, loc="upper left", ncol=2)

    burst = summary["adagrad_rms"]["burst"]
    first = burst["first_burst"] or {"x_at_peak": x0 / 2, "peak_step": None}
    xb = first["x_at_peak"]
    for name in ("adagrad_rms", "with_decay", "with_warmup"):
        label, color = STYLE[name]
        p = recs[name]["params"]
        zoom.plot(p[:, 0], p[:, 1], lw=0.6, color=color, label=label)
    ymax = 1.6 * (burst["max_excursion"] or 0.01 * y0)
    zoom.set(xlim=(0, 2.5 * xb), ylim=(-ymax, ymax), xlabel="x", ylabel="y")
    zoom.set_title(
        f"The floor: Adagrad (RMS, const η) bursts up the walls (first peak at step "
        f"{first['peak_step']})",
        fontsize=9,
    )
    zoom.legend(fontsize=7, loc="lower right")
    return _save(fig, out / "valley_trajectories.png")


def valley_curves(valley: Valley, recs: dict, out: Path) -> str:
    """Loss and distance to the minimum per step; the steep coordinate of plain GD."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for name, rec in recs.items():
        label, color = STYLE.get(name, (name, None))
        p = _finite(rec["params"])
        t, f = _envelope(valley.loss(p))
        axes[0].loglog(t + 1, f, lw=0.8, color=color, label=label)  # log axes: step + 1
        t, d = _envelope(np.hypot(p[:, 0], p[:, 1]))
        axes[1].loglog(t + 1, d, lw=0.8, color=color, label=label)
    axes[1].axhline(valley.tolerance, color="k", ls=":", lw=0.8, label="tolerance")
    axes[0].set(xlabel="step + 1", ylabel="f(θ)", title="Loss (max over blocks of 10 steps)")
    axes[1].set(xlabel="step + 1", ylabel="‖θ − θ*‖", title="Distance to the minimum (same)")
    axes[1].legend(fontsize=7)
    for name in ("gd_large_lr", "gd_small_lr"):
        label, color = STYLE[name]
        y = np.abs(_finite(recs[name]["params"])[:80, 1])
        axes[2].semilogy(np.arange(len(y)), y, ".-", lw=0.8, ms=3, color=color, label=label)
    axes[2].set(xlabel="step", ylabel="|y|", title="GD: steep coordinate (sign flips each step)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out / "valley_curves.png")


def valley_burst(valley: Valley, recs: dict, out: Path) -> str:
    """|y| per step, the stability ratio η_t·b/σ_t and η_t, for the Adagrad variants."""
    names = ("adagrad_rms", "with_cosine_decay", "with_decay", "with_warmup", "rmsprop")
    fig, axes = plt.subplots(3, 1, figsize=(11, 9.5), sharex=True)
    for name in names:
        if name not in recs:
            continue
        label, color = STYLE[name]
        rec = recs[name]
        n = len(rec["steep_step"])
        t, y = _envelope(np.abs(rec["params"][:, 1]), dense=0, block=max(n // 10000, 1))
        axes[0].semilogy(t, y, lw=0.6, color=color, label=label)
        idx = _thin(n, dense=0, stride=max(n // 20000, 1) | 1)
        axes[1].plot(idx, valley.b * rec["steep_step"][idx], lw=0.8, color=color, label=label)
        axes[2].plot(idx, rec["lr"][idx], lw=1.0, color=color, label=label)
    axes[1].axhline(2.0, color="k", ls="--", lw=0.8)
    axes[1].set_ylim(0, 4)
    axes[0].set(
        ylabel="|y| (distance from the floor; block max)",
        title="The burst: η/σ grows on the quiet floor until the steep direction is unstable",
    )
    axes[1].set(ylabel="η_t · b / σ_t  (unstable above 2)")
    axes[2].set(ylabel="η_t", xlabel="step")
    axes[0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return _save(fig, out / "valley_burst.png")


def plateau(rec: dict, summary: dict, out: Path) -> str:
    """Full-batch loss and gradient norm of the digits MLP, with the η cut."""
    fig, ax = plt.subplots(figsize=(10, 4.8))
    step = rec["step"]
    ax.semilogy(step, rec["loss"], color="tab:blue", lw=1.0, label="loss (full batch)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(step, rec["grad_norm"], color="tab:red", lw=0.6, label="‖∇L‖ (full batch)")
    ax2.set_ylabel("gradient norm", color="tab:red")
    lo, hi = summary["window_steps"]
    ax.axvspan(lo, hi, color="0.92", zorder=0)
    cut = summary["config"]["decay_at"]
    ax.axvline(cut, color="k", ls="--", lw=0.8)
    ax.set_title(
        f"Stuck is not a critical point: loss changes {100 * summary['loss_relative_change']:.1f}"
        f"% over the shaded plateau while ‖∇L‖ stays ~{summary['grad_norm_window_mean']:.2f}; "
        f"η/10 at step {cut}",
        fontsize=9,
    )
    fig.tight_layout()
    return _save(fig, out / "plateau.png")
