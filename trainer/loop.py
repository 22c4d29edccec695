"""The policy-gradient loop: rollout -> grade -> advantages -> loss -> one optimizer step, with hooks.

Default = the perfect baseline (config.py): one optimizer step per rollout batch, the loss's
old log-probs are the trainer's own `logp.detach()` from the same forward (so the importance ratio
is exactly 1, bit for bit), AdamW, no grad clipping, no KL, no entropy bonus.

When an off-policy knob is on (mini-batches, epochs, staleness, partial rollouts, low-precision or
noisy rollout) the trainer first runs one no-grad forward over the whole batch to get pi_old, the
policy before this step's first update; ratios are then pi / pi_old and the off-policy correction
weights use pi_old / pi_rollout. Every token keeps the optimizer-update count of the weights that
sampled it (Rollout.token_version; its lag is StepContext.version - token_version).

A step reads in four phases (`_step`): collect (prompts, rollout, grades), prepare (pi_old and pi_ref
forwards, reward transforms, advantages, token weightings -> the StepContext), update (epochs x
mini-batches: forward, loss, backward, optimizer step), row (the metrics row). Fully on-policy, the
one update's forward runs in prepare and its detach is pi_old, so the ratio is 1 bit for bit and
after_rollout fires at one place for every config. Reward transforms and token weightings live in
shaping.py, step controllers (a coefficient adapted each step) in controllers.py.

A counterfactual step is `Trainer.counterfactual_step(cfg, step, StepFrom(...), batch)`: the step a
config would take from given weights (and optimizer state) on a given batch, without moving the
trainer's own run; probe-check's shadow arms and the transfer table are made of them.

Hook points (the trainer imports nothing from probes; anything may attach):
  after_rollout         ctx has the rollout, rewards, advantages, old logits, mask
  after_backward        ctx also has the update's logits/logp (logp.grad = d loss / d logp), loss parts
  after_optimizer_step  gradients still present, parameters updated
  step_end              ctx.metrics is the row about to be written; hooks may add keys
A hook added with clock=False (e.g. a counterfactual step run alongside) is left out of time/*.
Rows go to run_dir/metrics.jsonl, one JSON object per step, flushed each step.

Collapse (collapse.py): after the step_end hooks the detector reads the row; a collapse (or a NaN/Inf
caught by the loop's guards, kind 'nan') writes `collapse/kind` and `collapse/reason` into that
step's row, stops the run and records {"status": "collapsed", "step", "kind", "reason"} in
status.json. Rows and checkpoints written before stay as they are (no checkpoint is taken after).

Size: the step, its finite guards and the run/checkpoint/resume contract (status.json never left
'running', weights_only checkpoints, resume refusals) are one state machine over one Trainer (~540 lines).

Left out on purpose: value functions/GAE (group baselines only), learning-rate schedules (a
constant lr keeps one-step predictions comparable along a run), sequence packing.

Size: one Trainer class (~530 lines): the step's four phases, the run loop and its checkpoints read
top to bottom in one file; the pieces that are not the loop live beside it (context.py, shaping.py,
controllers.py, collapse.py).
"""
from __future__ import annotations

import copy
import functools
import json
import pickle
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from . import algos, shaping, trust_region
from .collapse import CollapseDetector
from .config import ConfigError, TrainConfig, validate
from .context import StepContext, StepFrom, correction_params, policy_loss_params
from .controllers import CONTROLLERS, Controller, controller_row, make_controller
from .io import append_line, atomic_write_json, atomic_write_text, clear_run_dir, split_torn_tail
from .model import MODEL_SIZES, MODEL_SOURCES, ModelLoadError, float32_default, is_terminal, load_pretrained
from .rollout import Rollout, RolloutEngine, generate, left_pad, response_logits
from .tasks import TASKS, Problem, get_task
from .tokenizer import render_prompts

_OVERFLOW = re.compile(r"\b(inf|nan|overflow|non-finite)\b", re.IGNORECASE)
HOOK_POINTS = ("after_rollout", "after_backward", "after_optimizer_step", "step_end")


class TrainingError(RuntimeError):
    """A run that cannot continue (NaN, collapse guard); one-line message naming step and quantity."""


class NonFiniteError(TrainingError):
    """A NaN/Inf in logits, loss or gradient norm. Trainer.run records it as a collapse of kind 'nan'
    (a row with collapse/kind and collapse/reason, status 'collapsed') and stops without raising."""

    def __init__(self, msg: str, step: int):
        super().__init__(msg)
        self.step = step


def check_names(cfg: TrainConfig) -> None:
    """Every registry name in the config exists (UnknownNameError lists the known ones)."""
    algos.ADVANTAGES.check(cfg.algo.advantage)
    algos.check_group_size(cfg.algo.advantage, cfg.rollout.group_size)  # ConfigError: one line, exit 2
    algos.POLICY_LOSSES.check(cfg.algo.policy_loss)
    algos.AGGREGATIONS.check(cfg.algo.loss_agg)
    algos.KL_ESTIMATORS.check(cfg.algo.kl_estimator)
    algos.CORRECTIONS.check(cfg.offpolicy.correction)
    TASKS.check(cfg.task.name)
    for name in shaping.reward_transform_names(cfg):
        shaping.REWARD_TRANSFORMS.check(name)
    shaping.TOKEN_WEIGHTINGS.check(cfg.algo.token_weighting)
    if cfg.algo.controller != "none":
        CONTROLLERS.check(cfg.algo.controller)
    for f, _ in cfg.params:  # parameters of the selected entries (docs/plugins.md); ConfigError if stale
        cfg.entry_params(f)
    check_model_path(cfg.model.path)
    if cfg.model.path is None:
        MODEL_SIZES.check(cfg.model.size)
        if TASKS.get(cfg.task.name).chat:
            raise ConfigError(f"task {cfg.task.name!r} is a chat task (prompts go through a chat template) and the "
                              f"char-level size {cfg.model.size!r} has none: add --model smollm2-135m, or pick a raw-text task")


def check_model_path(path: Optional[str]) -> None:
    """model.path exists before anything runs: a registered source name, or a directory with config.json
    (whether its weights load is load_pretrained's business, called before any run directory is made).
    Here, not in model.py: model.py's source is part of the cold-start cache key (sft.py)."""
    if path is None:
        return
    if not path.strip():
        raise ModelLoadError("model.path is empty; give a Hugging Face model directory or a registered name")
    if path in MODEL_SOURCES:
        return
    p = Path(path).expanduser()
    try:
        is_dir, has_cfg = p.is_dir(), (p / "config.json").is_file()
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"model.path {path!r}: cannot be read ({type(e).__name__})") from None
    if not is_dir:
        known = ", ".join(MODEL_SOURCES.names()) or "none registered"
        raise ModelLoadError(f"model path {path!r} is not a directory; pass a local Hugging Face model directory "
                             f"(config.json + weights) or a registered name ({known})")
    if not has_cfg:
        raise ModelLoadError(f"{p} has no config.json: not a Hugging Face model directory "
                             "(save one with model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR))")


def _finite_or_raise(x: torch.Tensor, what: str, step: int, out: Path) -> None:
    if not torch.isfinite(x).all():
        raise NonFiniteError(
            f"step {step}: non-finite {what} (NaN/Inf); metrics up to step {step - 1} are kept in "
            f"{out / 'metrics.jsonl'}; lower optim.lr or enable a stabilizer", step)


class Trainer:
    @float32_default
    def __init__(self, cfg: TrainConfig, out_dir: str | Path, progress: bool = True,
                 resume: bool = False, overwrite: bool = False):
        validate(cfg)
        check_names(cfg)
        self.cfg = cfg
        self.out = Path(out_dir)
        self.progress = progress
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.task = get_task(cfg.task.name, **cfg.entry_params("task.name"))
        self.budget = cfg.task.max_new_tokens or self.task.max_new_tokens
        self.device = torch.device(cfg.run.device)
        if cfg.model.path:
            self.init_dir = cfg.model.path
        else:
            from .sft import cold_start
            self.init_dir = str(cold_start(cfg, progress=progress))
        self.model, self.tokenizer = load_pretrained(self.init_dir, cfg.model.dtype, cfg.run.device)
        self.model.train()
        self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer = self._make_optimizer(cfg)
        self.engine = RolloutEngine(self.model, cfg.offpolicy.staleness, cfg.offpolicy.rollout_dtype,
                                    cfg.offpolicy.partial_versions)
        policy_loss_params(cfg), correction_params(cfg)  # refuse bad clip/cap settings before any step
        self.controller: Optional[Controller] = make_controller(cfg)
        self.hooks: dict[str, list[Callable[[StepContext], None]]] = {p: [] for p in HOOK_POINTS}
        self._unclocked: set[int] = set()  # id() of hooks whose time is not the step's
        self._unclocked_s = 0.0
        self.trust_region = trust_region.attach(self)  # None unless optim.trust_region_kl > 0
        self.collapse = CollapseDetector(cfg.run, self.model.config.vocab_size)
        self.start_step = 0
        self.version = 0  # optimizer steps taken
        self.status: dict[str, Any] = {"status": "running"}
        self.resumed_rows: list[dict[str, Any]] = []  # the rows a resumed run keeps (probes rebuild state from them)
        if resume:
            self._load_checkpoint()
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            if overwrite:
                clear_run_dir(self.out)
            atomic_write_text(self.out / "config.json", cfg.to_json())
            atomic_write_text(self.out / "metrics.jsonl", "")

    # -- hooks ---------------------------------------------------------------------------------
    def add_hook(self, point: str, fn: Callable[[StepContext], None], clock: bool = True) -> None:
        """Call fn(ctx) at `point`; clock=False keeps its time out of the row's time/* (work run alongside)."""
        if point not in self.hooks:
            raise ValueError(f"unknown hook point {point!r}; known: {', '.join(HOOK_POINTS)}")
        self.hooks[point].append(fn)
        if not clock:
            self._unclocked.add(id(fn))

    def _fire(self, hooks: dict[str, list], point: str, ctx: StepContext) -> None:
        for fn in hooks[point]:
            if id(fn) in self._unclocked:
                t = time.perf_counter()
                fn(ctx)
                self._unclocked_s += time.perf_counter() - t
            else:
                fn(ctx)

    def _make_optimizer(self, cfg: TrainConfig) -> torch.optim.Optimizer:
        o = cfg.optim
        if o.name == "adamw":
            return torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        return torch.optim.SGD(self.model.parameters(), lr=o.lr, weight_decay=o.weight_decay)

    # -- one step: collect -> prepare -> update -> row ------------------------------------------
    def sample_problems(self, step: int, cfg: Optional[TrainConfig] = None) -> list[Problem]:
        cfg = cfg or self.cfg
        rng = np.random.default_rng([cfg.run.seed, step])
        base = self.task.sample(cfg.rollout.prompts_per_step, rng)
        return [p for p in base for _ in range(cfg.rollout.group_size)]

    def rollout(self, problems: list[Problem], step: int, cfg: Optional[TrainConfig] = None,
                version: Optional[int] = None) -> Rollout:
        """Sample the responses of `problems` from the current weights (the engine's, off-policy)."""
        cfg = cfg or self.cfg
        version = self.version if version is None else version
        tok = self.tokenizer
        # A group's G rows are one Problem object: render and pad each run once, then repeat the rows.
        starts = [i for i in range(len(problems)) if i == 0 or problems[i] is not problems[i - 1]]
        counts = torch.tensor([b - a for a, b in zip(starts, [*starts[1:], len(problems)])])
        p_ids, p_mask = left_pad(render_prompts(tok, [problems[i] for i in starts], self.task.chat), tok.pad_token_id)
        p_ids, p_mask = p_ids.repeat_interleave(counts, 0), p_mask.repeat_interleave(counts, 0)
        g = torch.Generator(device=self.device).manual_seed(cfg.run.seed * 1_000_003 + step)
        self.engine.push(version)
        sampler, sampled_by = self.engine.model_for_sampling(0)
        m = self.engine.segments  # partial rollouts: segment j is sampled by engine.model_for_sampling(j)
        r = cfg.rollout
        try:
            return generate(sampler, p_ids.to(self.device), p_mask.to(self.device), self.budget,
                            tok.eos_token_id, tok.pad_token_id, g, r.temperature, r.top_k, r.top_p,
                            cfg.offpolicy.logit_noise, version if sampled_by < 0 else sampled_by,
                            segment_len=-(-self.budget // m) if m > 1 else 0,
                            advance=self.engine.model_for_sampling if m > 1 else None)
        except FloatingPointError as e:
            _finite_or_raise(torch.tensor(float("nan")), str(e), step, self.out)

    def grade(self, problems, ro: Rollout) -> tuple[list[str], torch.Tensor]:
        texts = self.tokenizer.batch_decode(ro.response_ids.cpu(), skip_special_tokens=True)
        trunc = ro.truncated.tolist()
        skip = [tr and not self.task.grade_truncated for tr in trunc]  # truncated = 0 unless the task says
        correct = [0.0 if sk else self.task.grade(p, t) for p, t, sk in zip(problems, texts, skip)]
        return texts, torch.tensor(correct, dtype=torch.float32, device=self.device)

    def _policy_logp(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return algos.gather_logprobs(logits.float(), ids)

    def train_step(self, step: int) -> dict[str, Any]:
        """One step of this run: it moves the weights, the optimizer, the version and the controller."""
        cfg = self.controller.effective(self.cfg) if self.controller else self.cfg
        ctx = self._step(cfg, step, self.optimizer, self.hooks, self.version)
        self.version = ctx.version + ctx.update + 1
        if self.controller:  # the next step's coefficients, from what this one measured
            self.controller.update(ctx)
        return ctx.metrics

    def counterfactual_step(self, cfg: TrainConfig, step: int, start: StepFrom,
                            batch: Optional[Rollout] = None, hooks: bool = True) -> StepContext:
        """The step `cfg` would take from `start` (weights, optimizer state, version) on `batch`.

        A counterfactual step: nothing of this trainer's own run moves but its model, which is the
        working copy (it holds `start.weights` updated by the step afterwards, for hooks and callers
        to inspect). The optimizer is a fresh one built from cfg.optim, given `start.optimizer`'s
        moments when it is of the same kind (its own hyperparameters stay); the trainer's optimizer,
        version and controller are untouched. batch=None samples step `step`'s batch from
        `start.weights`; a given batch is reused as is (the prompts are step `step`'s, drawn from
        (run.seed, step)). hooks=False runs without this trainer's hooks. Returns the step's context:
        ctx.metrics is the row, ctx.rollout the batch. cfg must keep this trainer's model, task and
        rollout engine (they are built once, at __init__).
        """
        validate(cfg)
        check_names(cfg)
        same = lambda f: getattr(cfg, f) == getattr(self.cfg, f)  # noqa: E731
        eng = ("staleness", "rollout_dtype", "partial_versions")
        if not (same("model") and same("task")) or any(getattr(cfg.offpolicy, k) != getattr(self.cfg.offpolicy, k)
                                                       for k in eng):
            raise ValueError("a counterfactual step keeps the trainer's model, task and offpolicy."
                             f"{{{', '.join(eng)}}}; build a Trainer with that config instead")
        with torch.no_grad():
            self.model.load_state_dict(start.weights)
        if start.engine is not None and self.engine.separate:
            self.engine.load_state_dict(copy.deepcopy(start.engine))
        opt = self._make_optimizer(cfg)
        if start.optimizer is not None and start.optimizer_name == cfg.optim.name:
            st = copy.deepcopy(start.optimizer)
            st["param_groups"] = [dict(g, params=sg["params"]) for g, sg in
                                  zip(opt.state_dict()["param_groups"], st["param_groups"])]
            opt.load_state_dict(st)
        ctrl = make_controller(cfg)
        if ctrl is not None:
            if start.controller is not None and start.controller_name == cfg.algo.controller:
                ctrl.load_state_dict(start.controller)
            cfg = ctrl.effective(cfg)
        return self._step(cfg, step, opt, self.hooks if hooks else {p: [] for p in HOOK_POINTS},
                          start.version, batch)

    @float32_default
    def _step(self, cfg: TrainConfig, step: int, opt: torch.optim.Optimizer,
              hooks: dict[str, list], version: int, batch: Optional[Rollout] = None) -> StepContext:
        """collect -> prepare (after_rollout) -> update (after_backward, after_optimizer_step) -> row (step_end)."""
        self._unclocked_s = 0.0
        t0 = time.perf_counter()
        problems, ro, texts, correct = self._collect(cfg, step, version, batch)
        t_roll = time.perf_counter() - t0 - self._unclocked_s
        t1, u1 = time.perf_counter(), self._unclocked_s
        ctx, first = self._prepare(cfg, step, problems, ro, texts, correct, opt, version)
        self._fire(hooks, "after_rollout", ctx)
        losses, gnorms = self._update(ctx, opt, hooks, first)
        t_upd = time.perf_counter() - t1 - (self._unclocked_s - u1)
        self._row(ctx, hooks, losses, gnorms)
        ctx.metrics["time/rollout_s"] = t_roll
        ctx.metrics["time/update_s"] = t_upd
        ctx.metrics["time/step_s"] = time.perf_counter() - t0 - self._unclocked_s
        return ctx

    def _collect(self, cfg: TrainConfig, step: int, version: int, batch: Optional[Rollout]):
        """Phase 1: this step's prompts (from (run.seed, step)), their responses, the grades."""
        problems = self.sample_problems(step, cfg)
        ro = self.rollout(problems, step, cfg, version) if batch is None else batch
        texts, correct = self.grade(problems, ro)
        return problems, ro, texts, correct

    def _prepare(self, cfg, step, problems, ro, texts, correct, opt, version):
        """Phase 2: pi_old (and pi_ref) on the batch, rewards, advantages, loss mask and token weights."""
        a, ids, resp_mask = cfg.algo, ro.response_ids, ro.response_mask
        S, G = len(problems), cfg.rollout.group_size
        old_logits, old_logp, ref_logits, first = self._forwards(cfg, step, ro)
        sb = shaping.ShapingBatch(correct=correct, lengths=ro.lengths, response_ids=ids, mask=resp_mask,
                                  group_size=G, budget=self.budget, old_logits=old_logits,
                                  old_logp=old_logp, ref_logits=ref_logits, kl_estimator=a.kl_estimator)
        rewards = shaping.shape_rewards(cfg, correct.clone(), sb)
        adv = algos.ADVANTAGES.get(a.advantage)(rewards.view(S // G, G),
                                                **cfg.entry_params("algo.advantage")).reshape(S)
        tw = shaping.weigh_tokens(cfg, sb)
        if tw.seq is not None:
            adv = adv * tw.seq
        mask = resp_mask.clone() if tw.keep is None else resp_mask.clone() * tw.keep
        if first is None:  # pi_old from its own forward: pi_old / pi_rollout as the correction weighs it
            weights = algos.CORRECTIONS.get(cfg.offpolicy.correction)(
                old_logp - ro.rollout_logp, resp_mask, correction_params(cfg),
                **cfg.entry_params("offpolicy.correction"))
        else:
            weights = torch.ones_like(mask)
        if tw.token is not None:
            weights = weights * tw.token
        ctx = StepContext(step=step, cfg=cfg, trainer=self, problems=problems, rollout=ro, texts=texts,
                          correct=correct, rewards=rewards, advantages=adv, mask=mask, old_logits=old_logits,
                          old_logp=old_logp, weights=weights, ref_logits=ref_logits, version=version,
                          optimizer=opt)
        return ctx, first

    def _forwards(self, cfg: TrainConfig, step: int, ro: Rollout):
        """pi_old, log pi_old(a), pi_ref on the batch, and the first update's forward when prepare ran it.

        Off-policy (or when a reward term or the entropy filter needs pi_old before the update): a
        no-grad forward. Fully on-policy: the one update's own forward (mini_batches = epochs = 1, so
        its rows are the whole batch) with its graph, handed to the update as `first`; pi_old is its
        detach, so the ratio is 1 bit for bit.
        """
        a, S = cfg.algo, ro.response_ids.shape[0]
        need_old_forward = not cfg.fully_on_policy or (a.kl_coef > 0 and a.kl_placement == "reward") \
            or a.token_filter != "all"
        first = None
        if need_old_forward:
            with torch.no_grad():
                old_logits = response_logits(self.model, ro).float()
            _finite_or_raise(old_logits, "policy logits", step, self.out)
            old_logp = self._policy_logp(old_logits, ro.response_ids)
        ref_logits = None
        if a.kl_coef > 0:
            with torch.no_grad():
                ref_logits = response_logits(self.ref_model, ro).float()
        if not need_old_forward:
            idx = torch.arange(S).to(self.device)
            sub = ro.select(idx)
            logits = response_logits(self.model, sub).float()
            _finite_or_raise(logits.detach(), "policy logits", step, self.out)
            logp = self._policy_logp(logits, sub.response_ids)
            logp.retain_grad()
            first = (idx, sub, logits, logp)
            old_logits, old_logp = logits.detach(), logp.detach()
        return old_logits, old_logp, ref_logits, first

    def _update(self, ctx: StepContext, opt, hooks, first) -> tuple[list[float], list[float]]:
        """Phase 3: epochs x mini-batches of forward, loss, backward, after_backward, optimizer step."""
        cfg, step, ro = ctx.cfg, ctx.step, ctx.rollout
        S, n_mb = len(ctx.problems), cfg.offpolicy.mini_batches
        losses, gnorms, mb = [], [], S // n_mb
        for epoch in range(cfg.offpolicy.epochs):
            if n_mb > 1:
                order = torch.randperm(S, generator=torch.Generator().manual_seed(cfg.run.seed * 7919 + step * 131 + epoch))
            else:
                order = torch.arange(S)
            for k in range(n_mb):
                if first is not None:  # fully on-policy: the forward prepare ran (pi_old = its detach)
                    (idx, sub, logits, logp), first = first, None
                else:
                    idx = order[k * mb:(k + 1) * mb].to(self.device)
                    sub = ro.select(idx)
                    logits = response_logits(self.model, sub).float()
                    _finite_or_raise(logits.detach(), "policy logits", step, self.out)
                    logp = self._policy_logp(logits, sub.response_ids)
                    logp.retain_grad()
                loss, parts = self.loss(logits, logp, ctx, idx)
                _finite_or_raise(loss.detach(), "loss", step, self.out)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                params = [p for p in self.model.parameters() if p.grad is not None]
                gnorm = torch.nn.utils.clip_grad_norm_(
                    params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"))
                _finite_or_raise(gnorm, "gradient norm", step, self.out)
                ctx.update, ctx.index, ctx.logits, ctx.logp = len(losses), idx, logits.detach(), logp
                ctx.loss, ctx.loss_parts, ctx.grad_norm = loss.detach(), parts, float(gnorm)
                self._fire(hooks, "after_backward", ctx)
                tr = self.trust_region
                if tr is not None:
                    tr.snapshot()
                opt.step()
                if tr is not None:
                    tr.rescale(sub)  # the step scaled to a predicted KL(pi_old || pi_new) = delta
                self._fire(hooks, "after_optimizer_step", ctx)
                losses.append(loss.item())
                gnorms.append(float(gnorm))
        return losses, gnorms

    def _row(self, ctx: StepContext, hooks, losses: list[float], gnorms: list[float]) -> None:
        """Phase 4: the metrics row (ctx.metrics), the step_end hooks, the collapse check."""
        ro = ctx.rollout
        row: dict[str, Any] = {
            "step": ctx.step,
            "reward/mean": float(ctx.rewards.mean()),
            "reward/accuracy": float(ctx.correct.mean()),
            "response/length_mean": float(ro.lengths.float().mean()),
            "response/truncated_frac": float(ro.truncated.float().mean()),
            "loss": float(np.mean(losses)),
            "grad/norm": float(np.mean(gnorms)),
            "lr": float(ctx.optimizer.param_groups[0]["lr"]),
        }
        for name, v in ctx.loss_parts.items():
            row[f"loss/{name}"] = float(v)
        row.update(controller_row(ctx.cfg))  # the coefficients a step controller gave this step
        ctx.metrics = row
        self._fire(hooks, "step_end", ctx)
        if "collapse/reason" not in row:
            hit = self.collapse.check(row, lambda: float(
                algos.entropy_from_logits(ctx.old_logits)[ctx.mask > 0].double().mean()))
            if hit:
                row["collapse/kind"], row["collapse/reason"] = hit

    def loss(self, logits, logp, ctx: StepContext, idx,
             cfg: Optional[TrainConfig] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss of one update = PG (x correction and token weights) + KL (if in the loss) - entropy bonus.

        cfg: the config whose loss this is (default ctx.cfg, the step's); the loss-term audit passes
        one with a single term switched on.
        """
        cfg = cfg or ctx.cfg
        a = cfg.algo
        mask = ctx.mask[idx]
        agg = functools.partial(algos.AGGREGATIONS.get(a.loss_agg), **self.cfg.entry_params("algo.loss_agg"))
        pg_tok = algos.POLICY_LOSSES.get(a.policy_loss)(
            logp, ctx.old_logp[idx], ctx.advantages[idx][:, None].expand_as(mask), mask, policy_loss_params(cfg),
            **cfg.entry_params("algo.policy_loss"))
        parts = {"pg": agg(pg_tok * ctx.weights[idx], mask, float(self.budget))}
        total = parts["pg"]
        if a.kl_coef > 0 and a.kl_placement == "loss":
            ref = ctx.ref_logits[idx]
            ids = ctx.rollout.response_ids[idx]
            kl_tok = algos.KL_ESTIMATORS.get(a.kl_estimator)(
                logp, self._policy_logp(ref, ids), torch.log_softmax(logits, -1), torch.log_softmax(ref, -1),
                **self.cfg.entry_params("algo.kl_estimator"))
            parts["kl"] = agg(kl_tok, mask, float(self.budget))
            total = total + a.kl_coef * parts["kl"]
        if a.entropy_coef > 0:
            parts["entropy_bonus"] = agg(algos.entropy_from_logits(logits), mask, float(self.budget))
            total = total - a.entropy_coef * parts["entropy_bonus"]
        return total, {k: v.detach() for k, v in parts.items()}

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the remaining steps; status.json always ends as finished, collapsed or failed (with the
        reason), never 'running'. A NaN/Inf anywhere in a step, probes included, is a collapse of kind
        'nan': its row is written (step, collapse/kind, collapse/reason), earlier rows stay."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        # A bar on a terminal; in a pipe or file (CI, nohup, tee) one line when the run ends instead of frames.
        live = self.progress and is_terminal(sys.stderr)
        bar = tqdm(range(self.start_step, cfg.run.steps), desc="train", disable=not live,
                   initial=self.start_step, total=cfg.run.steps)
        t_start, post = time.perf_counter(), {}
        try:
            with open(self.out / "metrics.jsonl", "a") as f:
                for step in bar:
                    try:
                        row = self.train_step(step)
                    except NonFiniteError as e:  # a NaN collapse: its row holds only the step and why
                        row = {"step": step, "collapse/kind": "nan", "collapse/reason": str(e)}
                    except (ConfigError, TrainingError, KeyboardInterrupt):  # a guard's own verdict stands
                        raise
                    except Exception as e:  # noqa: BLE001 - an op or probe that broke on an overflow
                        # torch reports overflow as RuntimeError (multinomial on inf probabilities, AdamW's
                        # step size beyond float32): with non-finite weights or such a message it is a
                        # NaN collapse, anything else is a failure (status 'failed', re-raised).
                        msg = str(e).splitlines()[0] if str(e) else ""
                        if self._weights_finite() and not _OVERFLOW.search(msg):
                            raise
                        row = {"step": step, "collapse/kind": "nan", "collapse/reason":
                               f"step {step}: numeric overflow ({type(e).__name__}: {msg}); metrics up to step "
                               f"{step - 1} are kept; lower optim.lr or enable a stabilizer"}
                    append_line(f, json.dumps(row))
                    reason = row.get("collapse/reason")
                    if reason:  # before any checkpoint: the last good one is kept
                        self.status = {"status": "collapsed", "step": step,
                                       "kind": row.get("collapse/kind", "hook"), "reason": reason}
                        break
                    post = {k: f"{row[m]:.3f}" for k, m in (("reward", "reward/mean"),
                                                             ("entropy", "entropy/token_mean")) if m in row}
                    bar.set_postfix(post)
                    done = step + 1
                    if cfg.run.checkpoint_every and done % cfg.run.checkpoint_every == 0:
                        self.save_checkpoint(done)
            if self.status["status"] == "running":
                self.status = {"status": "finished", "step": cfg.run.steps - 1}
                self.save_checkpoint(cfg.run.steps)
        except TrainingError as e:
            self.status = {"status": "failed", "step": getattr(e, "step", None), "reason": str(e)}
            raise
        except KeyboardInterrupt:
            self.status = {"status": "failed", "reason": "interrupted (KeyboardInterrupt); resume with --resume"}
            raise
        except BaseException as e:
            if self.status.get("status") != "failed":  # a hook that stopped the run may have said why already
                msg = str(e).splitlines()[0] if str(e) else ""
                self.status = {"status": "failed", "reason": f"{type(e).__name__}: {msg}"}
            raise
        finally:
            bar.close()
            atomic_write_json(self.out / "status.json", self.status)
            if self.progress and not live:
                st = self.status
                done = (st.get("step") if st.get("step") is not None else self.start_step - 1) + 1 - self.start_step
                print(f"train: {st['status']} after {done} steps in {time.perf_counter() - t_start:.1f} s"
                      + "".join(f", {k} {v}" for k, v in post.items()), file=sys.stderr, flush=True)
        return self.status

    def _weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, next_step: int) -> None:
        """Write checkpoint/state.pt atomically; weights with a NaN/Inf are not written (the last good
        checkpoint stays, and the next step's guard records the collapse). Everything in it is tensors,
        numbers, strings, lists and dicts, so it loads with torch.load(weights_only=True)."""
        if not self._weights_finite():
            return
        d = self.out / "checkpoint"
        d.mkdir(exist_ok=True)
        tmp = d / "state.pt.tmp"
        torch.save({"step": next_step, "version": self.version,
                    "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "engine": self.engine.state_dict(), "init_dir": self.init_dir,
                    "controller": self.controller.state_dict() if self.controller else None}, tmp)
        tmp.replace(d / "state.pt")

    def _load_checkpoint(self) -> None:
        """Continue a run: the checkpoint (loaded with weights_only=True; a file that needs pickle is
        refused), the config (only run.* may change; run.steps not below the steps done), and the rows
        the checkpoint covers (a torn last line is dropped, with a note on stderr)."""
        path = self.out / "checkpoint" / "state.pt"
        if not path.exists():
            raise ConfigError(f"--resume: no checkpoint at {path}; run without --resume or set run.checkpoint_every")
        try:
            saved_cfg = json.loads((self.out / "config.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"--resume: cannot read {self.out / 'config.json'} ({type(e).__name__})") from None
        if isinstance(saved_cfg, dict):  # runs from before the params/plugins fields
            saved_cfg.setdefault("params", {}), saved_cfg.setdefault("plugins", [])
        if not isinstance(saved_cfg, dict) or saved_cfg != json.loads(self.cfg.to_json()) | {"run": saved_cfg.get("run")}:
            raise ConfigError(f"--resume: the config differs from {self.out / 'config.json'} (only run.* may change)")
        try:
            st = torch.load(path, map_location=self.device, weights_only=True)
        except pickle.UnpicklingError:
            raise ConfigError(f"--resume: {path} holds objects that need pickle to load (not a checkpoint this "
                              "trainer wrote); refused, nothing of it was run") from None
        except (OSError, RuntimeError, EOFError, ValueError) as e:
            raise ConfigError(f"--resume: {path} cannot be read ({type(e).__name__}); it is damaged") from None
        if not isinstance(st, dict) or not {"step", "version", "model", "optimizer", "engine"} <= set(st):
            raise ConfigError(f"--resume: {path} is not a checkpoint this trainer wrote")
        if self.cfg.run.steps < st["step"]:
            raise ConfigError(f"--resume: the checkpoint has {st['step']} steps done and run.steps is "
                              f"{self.cfg.run.steps}; give --steps >= {st['step']} (a shorter run is a new run: "
                              "use --overwrite or another --out)")
        try:
            self.model.load_state_dict(st["model"])
            self.optimizer.load_state_dict(st["optimizer"])
            self.engine.load_state_dict(st["engine"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise ConfigError(f"--resume: {path} does not fit this model ({type(e).__name__})") from None
        if self.controller and st.get("controller") is not None:
            self.controller.load_state_dict(st["controller"])
        self.start_step, self.version = st["step"], st["version"]
        # Keep only the rows the checkpoint covers: the continued run rewrites the rest identically.
        mpath = self.out / "metrics.jsonl"
        rows, torn = split_torn_tail(mpath.read_text() if mpath.exists() else "", before_step=self.start_step)
        if torn:
            print(f"--resume: dropped a torn last line of {mpath} (a write cut short)", file=sys.stderr)
        atomic_write_text(mpath, "".join(json.dumps(r) + "\n" for r in rows))
        for r in rows:  # the detector's streaks and kl/step history continue where they were
            self.collapse.check(r)
        self.resumed_rows = rows
        atomic_write_text(self.out / "config.json", self.cfg.to_json())


def train(cfg: TrainConfig, out_dir: str | Path, progress: bool = True, resume: bool = False,
          setup: Optional[Callable[[Trainer], None]] = None) -> Trainer:
    """Build a trainer, let `setup` attach hooks (e.g. the probes' recorder), run it."""
    t = Trainer(cfg, out_dir, progress=progress, resume=resume)
    if setup is not None:
        setup(t)
    t.run()
    return t
