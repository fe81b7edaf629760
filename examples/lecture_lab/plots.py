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


def _gd_zigzag(p: np.ndarray, x0: float, y_lim: float, steps: int) -> np.ndarray:
    """The first ``steps`` points of a GD run, cut where |y| leaves the panel."""
    p = _finite(p)[: steps + 1]
    out = np.abs(p[:, 1]) > y_lim
    return p[: int(np.argmax(out)) + 1] if out.any() else p


def trajectory_figure(valley: Valley, recs: dict, summary: dict) -> Any:
    """The figure of :func:`valley_trajectories` (returned, not saved: the tests inspect it).

    Top: contours and every trajectory, the legend outside the axes. Bottom left: the first
    steps of plain GD with the x axis magnified, so that its zigzag across the valley shows.
    Bottom right: the floor around Adagrad's burst.
    """
    fig = plt.figure(figsize=(14, 10), layout="constrained")
    grid = fig.add_gridspec(2, 2, height_ratios=[1.15, 1])
    ax = fig.add_subplot(grid[0, :])
    gd, zoom = fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
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
        # the burst and slow GD (under RMSProp's band otherwise) on top; RMSProp's ±η/2 zigzag faint
        front = name in ("adagrad_rms", "gd_small_lr")
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
    ax.plot([x0], [y0], "k*", ms=10, label="start")
    ax.plot([0], [0], "k+", ms=12, label="minimum")
    ax.set(xlim=(xs[0], xs[-1]), ylim=(ys[0], ys[-1]), xlabel=f"x (flat floor, a = {valley.a:g})")
    ax.set_ylabel(f"y (steep walls, b = {valley.b:g})")
    ax.set_title(
        f"Narrow valley, condition number {valley.b / valley.a:.0e} (axes not to scale; "
        "GD's zigzag is the vertical stroke at the start, magnified below left)"
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)

    # Plain GD: y is multiplied by (1 − η·b) < 0 every step while x barely moves, so the x axis
    # is shown as x − x0 (magnified about 10⁴ times against the top panel).
    n_gd = 40
    y_lim = 2.0 * y0
    for name, marker in (("gd_small_lr", "o"), ("gd_large_lr", "s")):
        if name not in recs:
            continue
        label, color = STYLE[name]
        p = _gd_zigzag(recs[name]["params"], x0, y_lim, n_gd)
        gd.plot(p[:, 0] - x0, p[:, 1], "-", marker=marker, ms=3, lw=0.8, color=color, label=label)
    gd.axhline(0.0, color="0.6", lw=0.7, zorder=0)
    gd.plot([0], [y0], "k*", ms=10)
    gd.set(ylim=(-1.1 * y_lim, 1.1 * y_lim), xlabel=f"x − {x0:g}", ylabel="y")
    gd.set_title(
        f"Plain GD, first {n_gd} steps: y flips sign every step (zigzag across the valley) "
        "while x hardly moves",
        fontsize=9,
    )
    gd.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)

    burst = summary["adagrad_rms"]["burst"]
    first = burst["first_burst"] or {"x_at_peak": x0 / 2, "peak_step": None}
    xb = first["x_at_peak"]
    for name in ("adagrad_rms", "with_decay", "with_warmup"):
        if name not in recs:
            continue
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
    zoom.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    return fig


def valley_trajectories(valley: Valley, recs: dict, summary: dict, out: Path) -> str:
    """Saves :func:`trajectory_figure` as ``valley_trajectories.png``."""
    return _save(trajectory_figure(valley, recs, summary), out / "valley_trajectories.png")


def curves_figure(valley: Valley, recs: dict) -> Any:
    """The figure of :func:`valley_curves`: loss and distance to the minimum per step, and the
    steep coordinate y of plain GD with its sign (a symmetric log axis: linear within ±10⁻³)."""
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
    n_gd, linthresh = 30, 1e-3
    for name in ("gd_large_lr", "gd_small_lr"):
        if name not in recs:
            continue
        label, color = STYLE[name]
        y = _finite(recs[name]["params"])[: n_gd + 1, 1]
        axes[2].plot(np.arange(len(y)), y, ".-", lw=0.8, ms=4, color=color, label=label)
    axes[2].set_yscale("symlog", linthresh=linthresh)
    axes[2].axhspan(-linthresh, linthresh, color="0.93", zorder=0)
    axes[2].axhline(0.0, color="0.5", lw=0.6)
    axes[2].set(
        xlabel="step",
        ylabel=f"y (log scale beyond ±{linthresh:g}, linear inside)",
        title="GD: steep coordinate y, its sign flips every step",
    )
    axes[2].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def valley_curves(valley: Valley, recs: dict, out: Path) -> str:
    """Saves :func:`curves_figure` as ``valley_curves.png``."""
    return _save(curves_figure(valley, recs), out / "valley_curves.png")


def valley_step_sizes(valley: Valley, recs: dict, out: Path) -> str:
    """η_t/σ_t over time (``gradtx.diagnostics``): the floor's (solid) and the wall's (dashed)
    per optimizer, with GD's stability limit 2/b on the wall; ``valley_step_sizes.png``."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for name, rec in recs.items():
        if "eta_over_sigma" not in rec:
            continue
        label, color = STYLE.get(name, (name, None))
        sizes = rec["eta_over_sigma"]
        t, hi = _envelope(sizes[:, 0])
        ax.loglog(t + 1, hi, lw=0.9, color=color, label=f"{label}: floor x")
        t, lo = _envelope(sizes[:, 1])
        ax.loglog(t + 1, lo, lw=0.9, ls="--", color=color)
    ax.axhline(2.0 / valley.b, color="k", ls=":", lw=0.8, label="2/b: the wall's stability limit")
    ax.set(
        xlabel="step + 1",
        ylabel="η_t / σ_t",
        title="Effective step size per coordinate (solid: floor x, dashed: wall y)",
    )
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return _save(fig, out / "valley_step_sizes.png")


def valley_burst(valley: Valley, recs: dict, out: Path) -> str:
    """|y| per step, the stability ratio η_t·b/σ_t and η_t, for the Adagrad variants."""
    names = ("adagrad_rms", "with_cosine_decay", "with_decay", "with_warmup", "rmsprop")
    fig, axes = plt.subplots(3, 1, figsize=(11, 10), sharex=True, layout="constrained")
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
    # above the panels: inside, every corner of the top panel has data under it
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncol=3, fontsize=8)
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
