"""Step controllers: coefficients of the loss adapted from step to step (e.g. toward a target KL or entropy).

A controller owns one or more coefficients of AlgoConfig (`coefs`, e.g. ('kl_coef',)). Each step
runs with the config `effective(cfg)` (those fields replaced by the controller's current values),
so the loss, the reward terms and every probe see the coefficient the step really used; the row
logs each one as `controller/<field>`. After the step, `update(ctx)` moves the values for the next
step from what the step measured. `state_dict()` is plain numbers: it goes into the checkpoint
(readable with torch.load(weights_only=True)) and `load_state_dict` restores it on --resume.

One signature (docs/plugins.md): an entry of CONTROLLERS is a class called as
`cls(cfg: TrainConfig, *, <params>)` with the methods of `Controller`; its parameters are the
keyword-only arguments of its __init__. The built-ins take `target` and `horizon` from
algo.controller_target / algo.controller_horizon (any entry declaring a parameter of those names
gets them), other parameters from `entry_params`.

Left out: controllers of the learning rate (a constant lr keeps one-step predictions comparable) and
of sampling settings (they would change the batch a counterfactual pair must share).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Optional

import torch

from solidrl.theory.registry import Registry

from . import algos
from .config import ConfigError, TrainConfig
from .context import StepContext
from .shaping import entry_params

CONTROLLERS: Registry[type] = Registry("step controller", field="algo.controller")
FROM_CONFIG = ("target", "horizon")  # parameters the built-ins take from algo.controller_<name>


class Controller:
    """The interface: coefficients, one update per step, plain-number state."""

    coefs: tuple[str, ...] = ()
    """The AlgoConfig fields this controller sets."""

    def __init__(self, cfg: TrainConfig):
        self.value = float(getattr(cfg.algo, self.coefs[0])) if self.coefs else 0.0

    def values(self) -> dict[str, float]:
        return {self.coefs[0]: self.value}

    def update(self, ctx: StepContext) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.value = float(d["value"])

    def effective(self, cfg: TrainConfig) -> TrainConfig:
        """cfg with the controlled coefficients at their current values."""
        return dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, **self.values()))


def batch_kl(ctx: StepContext) -> float:
    """mean_i [ sum_t k_it m_it / sum_t m_it ]: the sequence-mean of the token-mean KL(pi_old || pi_ref).

    k is algo.kl_estimator on the batch's response tokens (m = response mask), before the update, as
    verl's apply_kl_penalty measures `current_kl` for its controller.
    """
    ro = ctx.rollout
    ref_lp = algos.gather_logprobs(ctx.ref_logits.float(), ro.response_ids)
    k = algos.KL_ESTIMATORS.get(ctx.cfg.algo.kl_estimator)(
        ctx.old_logp, ref_lp, torch.log_softmax(ctx.old_logits, -1), torch.log_softmax(ctx.ref_logits, -1))
    m = ro.response_mask.double()
    return float(((k.double() * m).sum(-1) / m.sum(-1).clamp(min=1)).mean())


def batch_entropy(ctx: StepContext) -> float:
    """mean over the loss tokens of H(pi_old)_t = -sum_v pi_old(v) log pi_old(v) (nats per token)."""
    return float(algos.entropy_from_logits(ctx.old_logits)[ctx.mask > 0].double().mean())


@CONTROLLERS.register("adaptive_kl")
class AdaptiveKL(Controller):
    """beta <- beta (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon), n = sequences in the step.

    The adaptive KL controller of Ziegler et al. 2019 ("Fine-Tuning Language Models from Human
    Preferences", arXiv:1909.08593, §2.2), with the semantics of verl's AdaptiveKLController
    (verl/trainer/ppo/core_algos.py; the same in TRL and OpenRLHF): a proportional error clipped to
    +-0.2, a step n / horizon with n the batch size, KL measured by `batch_kl` before the update.
    beta starts at algo.kl_coef (> 0: the update is multiplicative) and applies where
    algo.kl_placement puts the KL (loss or reward).
    """

    coefs = ("kl_coef",)

    def __init__(self, cfg: TrainConfig, *, target: float = 0.0, horizon: float = 10000.0):
        super().__init__(cfg)
        if self.value <= 0 or target <= 0 or horizon <= 0:
            raise ConfigError("algo.controller=adaptive_kl needs algo.kl_coef > 0 (its start), "
                              "algo.controller_target > 0 (the target KL per token) and algo.controller_horizon > 0")
        self.target, self.horizon = target, horizon

    def update(self, ctx: StepContext) -> None:
        err = min(max(batch_kl(ctx) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + err * len(ctx.problems) / self.horizon


@CONTROLLERS.register("adaptive_entropy")
class AdaptiveEntropy(Controller):
    """alpha <- clip(alpha + delta * sign(target - H), 0, max_coef), H = `batch_entropy` before the update.

    Adaptive entropy control of Skywork-OR1 (He et al. 2025, arXiv:2505.22312, "Adaptive Entropy
    Control"): raise the entropy bonus by delta while the policy's entropy is below the target, lower
    it while above, never below 0. alpha starts at algo.entropy_coef; target is in nats per token.
    """

    coefs = ("entropy_coef",)

    def __init__(self, cfg: TrainConfig, *, target: float = 0.0, delta: float = 1e-3, max_coef: float = 1e-2):
        super().__init__(cfg)
        if target <= 0 or delta <= 0 or max_coef < self.value:
            raise ConfigError("algo.controller=adaptive_entropy needs algo.controller_target > 0 (the target "
                              "entropy, nats per token), delta > 0 and max_coef >= algo.entropy_coef")
        self.target, self.delta, self.max_coef = target, delta, max_coef

    def update(self, ctx: StepContext) -> None:
        h = batch_entropy(ctx)
        step = self.delta * (1.0 if h < self.target else -1.0 if h > self.target else 0.0)
        self.value = min(max(self.value + step, 0.0), self.max_coef)


def make_controller(cfg: TrainConfig) -> Optional[Controller]:
    """The controller algo.controller names ('none' = None), with its parameters."""
    name = cfg.algo.controller
    if name == "none":
        return None
    cls = CONTROLLERS.get(name)
    declared = inspect.signature(cls.__init__).parameters
    kw = {p: getattr(cfg.algo, f"controller_{p}") for p in FROM_CONFIG if p in declared}
    # values set as algo.controller.<param> win over the algo.controller_* fields; declared defaults do not
    set_here = dict(dict(cfg.params).get("algo.controller", ()))
    kw.update({k: v for k, v in entry_params(cfg, "algo.controller", name).items() if k in set_here})
    return cls(cfg, **kw)


def controller_row(cfg: TrainConfig) -> dict[str, float]:
    """{'controller/<field>': value} for the coefficients algo.controller owns, as `cfg` has them."""
    if cfg.algo.controller == "none":
        return {}
    return {f"controller/{c}": float(getattr(cfg.algo, c)) for c in CONTROLLERS.get(cfg.algo.controller).coefs}

