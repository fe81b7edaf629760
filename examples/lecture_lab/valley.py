r"""The narrow convex valley: :math:`f(x, y) = \tfrac12 (a x^2 + b y^2)` with :math:`b/a = 10^6`.

``x`` runs along the long flat floor (curvature ``a``), ``y`` up the steep walls (curvature
``b``). Every optimizer sees the exact gradient plus the same small Gaussian noise (as from
mini-batches), which seeds the burst: on a noiseless quadratic the steep coordinate decays to
exactly zero and an unstable step size has nothing to amplify.

Steps are counted from 0: ``params[t]`` is the point after ``t`` updates.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gradtx


@dataclasses.dataclass(frozen=True)
class Valley:
    """The problem and the gradient noise; ``tolerance`` is the radius of "reached the minimum"."""

    a: float = 1.0
    b: float = 1e6
    start: tuple[float, float] = (100.0, 0.2)
    noise: float = 1e-4
    seed: int = 0
    tolerance: float = 0.05

    def loss(self, p: np.ndarray) -> np.ndarray:
        return 0.5 * (self.a * p[..., 0] ** 2 + self.b * p[..., 1] ** 2)

    def describe(self) -> dict[str, Any]:
        return {
            "f": "0.5 * (a * x**2 + b * y**2); x along the flat floor, y up the steep walls",
            "a": self.a,
            "b": self.b,
            "condition_number": self.b / self.a,
            "start": list(self.start),
            "minimum": [0.0, 0.0],
            "gradient_noise_std": self.noise,
            "noise": "i.i.d. Gaussian added to both gradient coordinates at every step, the same "
            "sequence for every optimizer (as from mini-batches); it seeds the burst",
            "seed": self.seed,
            "tolerance": self.tolerance,
            "gd_stability_limit": 2.0 / self.b,
        }


def trajectory(tx: Any, valley: Valley, steps: int) -> dict[str, np.ndarray]:
    """Runs ``tx`` for ``steps`` updates in one ``lax.scan``.

    Returns ``params`` (``steps + 1`` points), ``steep_step``: ``-u_y / g_y``, the step size
    actually applied in the steep direction (``η_t / σ_t`` for an optimizer without momentum),
    and ``eta_over_sigma``: ``gradtx.diagnostics``' effective step size η_t/σ_t, the larger
    (the floor's, x) and the smaller (the wall's, y) of the two, shape ``(steps, 2)``.
    """
    curvature = jnp.array([valley.a, valley.b], jnp.float32)
    key = jax.random.key(valley.seed)
    noise = valley.noise * jax.random.normal(key, (steps, 2), jnp.float32)
    p0 = jnp.array(valley.start, jnp.float32)

    def body(carry, n):
        p, state = carry
        g = curvature * p + n
        u, new = tx.update(g, state, p)
        # η/σ of the two coordinates: the summary's max and min (the floor takes the larger)
        size = gradtx.diagnostics(tx, g, state, p, u, new)["step_size"]["all"]
        p = gradtx.apply_updates(p, u)
        return (p, new), (p, -u[1] / g[1], jnp.stack([size["max"], size["min"]]))

    @jax.jit
    def run(p0, noise):
        _, (ps, steep, sizes) = jax.lax.scan(body, (p0, tx.init(p0)), noise)
        return jnp.concatenate([p0[None], ps]), steep, sizes

    params, steep, sizes = run(p0, noise)
    return {
        "params": np.asarray(params, np.float64),
        "steep_step": np.asarray(steep, np.float64),
        "eta_over_sigma": np.asarray(sizes, np.float64),
    }


def learning_rates(tx: gradtx.Optimizer, steps: int) -> np.ndarray:
    """η_t for t = 0 .. steps − 1."""
    lr = tx.schedule.learning_rate
    if not callable(lr):
        return np.full(steps, float(lr))
    return np.asarray(jax.jit(jax.vmap(lr))(jnp.arange(steps, dtype=jnp.int32)), np.float64)


class RootDecay(gradtx.schedules.Schedule):
    r""":math:`\eta_s = \eta_0 / \sqrt{s + 1}`: the schedule that turns the lecture's Adagrad
    (root *mean* square) into the textbook one (root of the *sum*)."""

    init_value: float = gradtx.hyper()

    def value(self, step: jax.Array) -> jax.Array:
        return self.init_value / jnp.sqrt(step + 1.0)


def adagrad_rms(learning_rate: Any) -> gradtx.Optimizer:
    """The lecture's Adagrad: σ = root mean square of all past gradients."""
    return gradtx.adagrad(learning_rate, initial_accumulator_value=0.0, average=True)


@dataclasses.dataclass(frozen=True)
class Lab:
    """The learning rates of the valley experiments (``lr`` is the adaptive methods' η)."""

    lr: float = 0.01
    textbook_adagrad_lr: float = 1.0
    decay_from: int = 8000  # inverse-sqrt decay after this step
    warmup_steps: int = 2000
    steps: int = 100_000

    def optimizers(self, valley: Valley) -> dict[str, tuple[Any, str]]:
        """Name -> (optimizer, what it is)."""
        lr, s = self.lr, gradtx.schedules
        return {
            "gd_large_lr": (gradtx.sgd(2.2 / valley.b), "gradient descent, η = 2.2/b (above 2/b)"),
            "gd_small_lr": (gradtx.sgd(1.9 / valley.b), "gradient descent, η = 1.9/b (below 2/b)"),
            "adagrad_rms": (adagrad_rms(lr), f"lecture Adagrad (RMS of all past g), η = {lr}"),
            "adagrad_sum": (
                gradtx.adagrad(self.textbook_adagrad_lr, initial_accumulator_value=0.0),
                f"textbook Adagrad (root of the sum), η = {self.textbook_adagrad_lr}",
            ),
            "rmsprop": (gradtx.rmsprop(lr), f"RMSProp (decay 0.9), η = {lr}"),
            "adam": (gradtx.adam(lr), f"Adam, η = {lr}"),
            "with_decay": (
                adagrad_rms(s.inverse_sqrt(lr, self.decay_from, init_value=lr)),
                f"lecture Adagrad, η = {lr} until step {self.decay_from}, then "
                f"η·√({self.decay_from}/t)",
            ),
            "with_warmup": (
                adagrad_rms(s.warmup_constant(0.0, lr, self.warmup_steps)),
                f"lecture Adagrad, η warmed up linearly from 0 to {lr} over "
                f"{self.warmup_steps} steps",
            ),
            "with_cosine_decay": (
                adagrad_rms(s.cosine_decay(lr, self.steps)),
                f"lecture Adagrad, η = {lr} cosine-decayed to 0 over the run",
            ),
        }


def _first(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else None


def excursions(valley: Valley, params: np.ndarray) -> dict[str, Any]:
    """The burst: how far the steep coordinate rises again after the descent reached the floor.

    The *turn* is the first step with ``|y| < 10⁻³ |y₀|``; a burst is a stretch of steps with
    ``|y| > 5·10⁻³ |y₀|`` after it (stretches less than 50 steps apart count as one).
    """
    y = np.abs(params[:, 1])
    y0 = abs(valley.start[1])
    turn = _first(y < 1e-3 * y0)
    if turn is None:
        return {"turn_step": None, "max_excursion": None, "step": None, "n_bursts": 0}
    j = turn + int(np.argmax(y[turn:]))
    high = turn + np.flatnonzero(y[turn:] > 5e-3 * y0)
    bursts = np.split(high, np.flatnonzero(np.diff(high) > 50) + 1) if high.size else []
    first = None
    if bursts:
        b0 = bursts[0]
        peak = int(b0[0] + np.argmax(y[b0[0] : b0[-1] + 1]))
        first = {"start": int(b0[0]), "peak_step": peak, "excursion": float(y[peak])}
        first["x_at_peak"] = float(params[peak, 0])
    half = len(y) // 2
    return {
        "turn_step": turn,
        "max_excursion": float(y[j]),
        "step": j,
        "x_at_max": float(params[j, 0]),
        "n_bursts": len(bursts),
        "first_burst": first,
        "late_max_excursion": float(y[half:].max()),
        "relative_to_start": float(y[j] / y0),
    }


def stability(
    valley: Valley, steep_step: np.ndarray, turn: int | None, grows: bool
) -> dict[str, Any]:
    """The steep direction's stability ratio ``η_t · b / σ_t`` (> 2: each step overshoots more).

    Valid for an optimizer without momentum, whose step in ``y`` is ``η_t g_y / σ_t``. With
    ``grows`` (the mean form of Adagrad and a constant η at the end) σ of the quiet floor shrinks
    as 1/√t, so a ratio that ends below 2 grows as √t and reaches 2 near
    ``expected_unstable_near_step``.
    """
    ratio = valley.b * steep_step
    after = ratio[turn:] if turn is not None else ratio
    unstable = _first(after > 2.0)
    out: dict[str, Any] = {
        "first_unstable_step": None if unstable is None else unstable + (turn or 0),
        "max_ratio_after_turn": float(after.max()),
        "final_ratio": float(ratio[-1]),
    }
    if unstable is None and grows and ratio[-1] < 2.0:
        out["expected_unstable_near_step"] = int(len(ratio) * (2.0 / ratio[-1]) ** 2)
    return out


def summarize(valley: Valley, name: str, rec: dict[str, np.ndarray]) -> dict[str, Any]:
    """Distances, steps to the tolerance and the excursions of one run."""
    p = rec["params"]
    finite = np.all(np.isfinite(p), axis=1) & (np.abs(p).max(axis=1) < 1e30)
    bad = _first(~finite)
    ok = p if bad is None else p[:bad]
    with np.errstate(over="ignore", invalid="ignore"):
        dist = np.hypot(ok[:, 0], ok[:, 1])
    hit = _first(dist < valley.tolerance)
    out: dict[str, Any] = {
        "final_distance": float(dist[-1]) if bad is None else None,
        "min_distance": float(dist.min()),
        "reached_tolerance": hit is not None,
        "steps_to_tolerance": hit,
        "converged": bad is None and bool(dist[-1] < valley.tolerance),
        "diverged": bad is not None,
        "first_nonfinite_step": bad,
    }
    if name.startswith("gd"):
        y = np.abs(ok[:, 1])
        tail = y[-max(len(y) // 10, 1) :]
        flips = np.sign(ok[1:, 1]) * np.sign(ok[:-1, 1]) < 0
        out["steep_sign_flips"] = int(flips.sum())
        out["max_steep_coordinate"] = float(y.max())
        # the steep coordinate does not settle: it blows up, or still swings at the end
        out["diverged_or_oscillating"] = bool(bad is not None or tail.max() > 0.1 * y[0])
    return out


def run_lab(
    valley: Valley, lab: Lab, progress: bool = True
) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Runs every optimizer of ``lab`` on ``valley``: (summary, trajectories)."""
    from tqdm.auto import tqdm

    summary: dict[str, Any] = {"problem": valley.describe(), "steps": lab.steps}
    records: dict[str, dict[str, np.ndarray]] = {}
    opts = lab.optimizers(valley)
    for name, (tx, what) in tqdm(opts.items(), desc="valley", disable=not progress):
        rec = records[name] = trajectory(tx, valley, lab.steps)
        rec["lr"] = learning_rates(tx, lab.steps)
        s = {"optimizer": what, **summarize(valley, name, rec)}
        if not name.startswith("gd"):
            s["burst"] = excursions(valley, rec["params"])
        if name.startswith(("adagrad", "with_")) or name == "rmsprop":
            # σ ∝ 1/√t on the floor only for the mean form, and η must be constant by the end
            lr = tx.schedule.learning_rate
            late = [float(lr(t)) if callable(lr) else lr for t in (lab.steps // 2, lab.steps)]
            mean_form = getattr(tx.knobs.scale, "average", False)
            turn = s["burst"]["turn_step"]
            grows = mean_form and late[0] == late[1]
            s["stability"] = stability(valley, rec["steep_step"], turn, grows)
        s["describe"] = {k: tx.describe()[k] for k in ("g", "sigma", "eta")}
        sizes = rec["eta_over_sigma"]
        s["eta_over_sigma"] = {"floor_final": sizes[-1, 0], "wall_final": sizes[-1, 1]}
        if tx.knobs is not None and tx.knobs.direction is None:  # no momentum: u_y/g_y = η/σ_y
            steep = rec["steep_step"]
            ok = np.isfinite(steep)
            s["eta_over_sigma"]["brackets_steep_step"] = bool(
                np.all(sizes[ok, 1] <= steep[ok] * (1 + 1e-4))
                and np.all(sizes[ok, 0] >= steep[ok] * (1 - 1e-4))
            )
        summary[name] = s
    summary["textbook_adagrad_is_rms_with_root_decay"] = _same_as_root_decay(valley, lab, records)
    summary["adagrad_rms_without_noise"] = _without_noise(valley, lab)
    names = ("adagrad_rms", "with_decay", "with_warmup", "with_cosine_decay")
    exc = {n: summary[n]["burst"]["max_excursion"] for n in names}
    summary["burst_comparison"] = {
        "max_excursion": exc,
        "n_bursts": {n: summary[n]["burst"]["n_bursts"] for n in names},
        "decay_and_warmup_remove_it": all(
            summary[n]["burst"]["n_bursts"] == 0 and exc["adagrad_rms"] > 20 * exc[n]
            for n in ("with_decay", "with_warmup")
        ),
    }
    return summary, records


def _without_noise(valley: Valley, lab: Lab) -> dict[str, Any]:
    """The lecture's Adagrad on the exact gradient: the floor decays to exactly 0, no burst."""
    quiet = dataclasses.replace(valley, noise=0.0)
    p = trajectory(adagrad_rms(lab.lr), quiet, lab.steps)["params"]
    zero = _first(p[:, 1] == 0.0)
    return {**excursions(quiet, p), "steep_coordinate_exactly_zero_from_step": zero}


def _same_as_root_decay(
    valley: Valley, lab: Lab, records: dict[str, dict[str, np.ndarray]]
) -> dict[str, Any]:
    """Textbook Adagrad vs the lecture's with ``η/√(t+1)``: the same run, up to ε's place."""
    tx = adagrad_rms(RootDecay(lab.textbook_adagrad_lr))
    other = trajectory(tx, valley, lab.steps)["params"]
    diff = float(np.max(np.abs(other - records["adagrad_sum"]["params"])))
    return {"max_abs_difference": diff, "same": diff < 1e-3}
