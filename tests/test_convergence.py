"""Every named optimizer solves an ill-conditioned quadratic and Rosenbrock's valley.

Problems (2-D, float32, 5,000 full-gradient steps):

- the elongated quadratic ``f(x, y) = ½(x² + 100 y²)``, condition number 100, from (1, 1),
  ``f₀ = 50.5``. The steep y-direction is solved in a few steps by any stable method; what remains
  is ``½x²`` = 0.5, and the threshold ``f < 1e-3`` needs ``|x| < 0.045``, i.e. real progress along
  the direction whose curvature is 100 times smaller.
- Rosenbrock's function ``(1 - x)² + 100 (y - x²)²`` from (-1.2, 1), ``f₀ = 24.2``. On the valley
  floor ``f = (1 - x)²``, so ``f < 0.05`` means ``|x - 1| < 0.23``: the optimizer has followed the
  curved valley around the bend past x = 0 (where ``f = 1``), not merely dropped into it.

Hyperparameters are ordinary for each method (a step size of about 1e-3 to 3e-2). Methods whose
step length does not shrink with the gradient (sign-based: signSGD, Lion; trust-ratio: LAMB, LARS;
and Adadelta, whose step tracks its own past steps) circle the minimum at a distance set by η, so
they get η decayed linearly to 0 over the run, as they are used in practice. With these settings
every method ends at least 8 times below each threshold (measured: worst quadratic 3e-4, worst
Rosenbrock 6e-3).
"""

import functools

import jax
import jax.numpy as jnp
import pytest
from helpers import named_optimizer_names

import gradtx

STEPS = 5000


def _decayed(peak: float):
    return gradtx.schedules.linear(peak, 0.0, STEPS)


CONVERGENCE = {
    "sgd": lambda: gradtx.sgd(1e-3, momentum=0.9),
    "sign_sgd": lambda: gradtx.sign_sgd(_decayed(2e-3)),
    "adagrad": lambda: gradtx.adagrad(1.0),
    "rmsprop": lambda: gradtx.rmsprop(1e-3, momentum=0.9),
    "adadelta": lambda: gradtx.adadelta(_decayed(1.0), rho=0.95),
    "adam": lambda: gradtx.adam(0.03),
    "adamw": lambda: gradtx.adamw(0.03),
    "nadam": lambda: gradtx.nadam(0.03),
    "nadamw": lambda: gradtx.nadamw(0.03),
    "adamax": lambda: gradtx.adamax(0.1),
    "amsgrad": lambda: gradtx.amsgrad(0.03),
    "adabelief": lambda: gradtx.adabelief(0.03),
    "yogi": lambda: gradtx.yogi(0.03),
    # RAdam's first steps are unscaled momentum SGD (gradients ~200 here), so η must be small.
    "radam": lambda: gradtx.radam(3e-3, b2=0.99),
    "lion": lambda: gradtx.lion(_decayed(3e-3)),
    "lamb": lambda: gradtx.lamb(_decayed(0.03)),
    "lars": lambda: gradtx.lars(_decayed(1.0)),
    "adafactor": lambda: gradtx.adafactor(3e-3, multiply_by_parameter_scale=False),
    "adamaxw": lambda: gradtx.adamaxw(0.1),
    "adan": lambda: gradtx.adan(0.03),
    "novograd": lambda: gradtx.novograd(_decayed(0.03)),
    "optimistic_gradient_descent": lambda: gradtx.optimistic_gradient_descent(1e-3, 1.0, 0.5),
    "optimistic_adam": lambda: gradtx.optimistic_adam(0.03),
    "optimistic_adam_v2": lambda: gradtx.optimistic_adam_v2(0.03),
    "signum": lambda: gradtx.signum(_decayed(2e-3)),
    "rprop": lambda: gradtx.rprop(1e-3),
    "sm3": lambda: gradtx.sm3(1.0),
    "fromage": lambda: gradtx.fromage(_decayed(0.01)),
    "noisy_sgd": lambda: gradtx.noisy_sgd(1e-3, eta=1e-6, key=0),
    "polyak_sgd": lambda: gradtx.polyak_sgd(1e-2),
    "dog": lambda: gradtx.dog(),
    "dowg": lambda: gradtx.dowg(),
    "prodigy": lambda: gradtx.prodigy(_decayed(1.0)),
    "dadapt_adamw": lambda: gradtx.dadapt_adamw(_decayed(1.0)),
    "muon": lambda: gradtx.muon(0.03),
    "adopt": lambda: gradtx.adopt(0.05, b2=0.999),
    "ademamix": lambda: gradtx.ademamix(
        0.02, b3=0.999, alpha_warmup_steps=500, b3_warmup_steps=500
    ),
    "lbfgs": lambda: gradtx.lbfgs(0.1, linesearch=None),
    "sophia": lambda: gradtx.sophia(0.01),
    "soap": lambda: gradtx.soap(0.03),
}


def _quadratic(p):
    x, y = p["xy"][0], p["xy"][1]
    return 0.5 * (x * x + 100.0 * y * y)


def _rosenbrock(p):
    x, y = p["xy"][0], p["xy"][1]
    return (1.0 - x) ** 2 + 100.0 * (y - x * x) ** 2


PROBLEMS = {
    "quadratic": (_quadratic, (1.0, 1.0), 1e-3),
    "rosenbrock": (_rosenbrock, (-1.2, 1.0), 5e-2),
}


def test_every_named_optimizer_is_covered():
    named = named_optimizer_names()
    assert {"sgd", "adamw", "lion", "lamb", "adafactor"} <= named
    assert named <= set(CONVERGENCE), named - set(CONVERGENCE)


@functools.partial(jax.jit, static_argnums=2)
def _minimise(tx, xy0, problem):
    loss = PROBLEMS[problem][0]
    params = {"xy": xy0}

    def body(carry, _):
        params, state = carry
        value, grads = jax.value_and_grad(loss)(params)
        # extra arguments for the optimizers that declare them (Polyak: value, Sophia: obj_fn)
        updates, state = tx.update(grads, state, params, value=value, obj_fn=loss)
        return (gradtx.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=STEPS)
    return loss(params)


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("name", list(CONVERGENCE))
def test_converges(name, problem):
    loss, start, threshold = PROBLEMS[problem]
    xy0 = jnp.array(start, jnp.float32)
    initial = float(loss({"xy": xy0}))
    final = float(_minimise(CONVERGENCE[name](), xy0, problem))
    assert final < threshold, f"{name} on {problem}: {initial:.3g} -> {final:.3g}"
