"""The step recorder: attaches the metric functions (probes.metrics) to a Trainer's hooks.

Per probed step it adds the contract's keys (docs/metrics.md) to the metrics.jsonl row, stores the
batch statistics predictors consume (docs/contracts.md) in run_dir/stats/step_{step:06d}.pt, and
writes the registered predictors' outputs as pred/<predictor>/<metric>.

Where each quantity comes from (the trainer imports nothing from here):
  after_rollout         pi_old on the batch (ctx.old_logits): exact per-token entropy and softmax moments
                        in float64; a flat copy of the parameters (theta before the step)
  after_backward        per update: c_t = -d loss / d logp_t (ctx.logp.grad), the importance ratio
                        pi / pi_old, per-group gradient norms (undoing clipping: pre-clip, like grad/norm)
  step_end              ONE no-grad forward of the updated policy on the step's own batch (entropy/delta
                        and kl/step from the same logits), the reference forward (unless the trainer
                        computed ref logits), the update norm, outcomes, advantages, covariance, the
                        stats file and the predictors; optionally the JVP first-order logit change
Nothing is cached across steps. Entropies and KLs are float64 from log_softmax of the logits.

Probe groups (cfg.probes.groups, 'all' by default): see GROUPS; the Recorder serves RECORDER_GROUPS,
probes/probeset.py attaches the other probes by theirs. A quantity that cannot be computed is absent
from the row, never 0. A non-finite logit in a probe forward raises the trainer's NonFiniteError:
the run ends collapsed (kind nan) with that step's row naming the quantity; earlier rows stay.

Left out: gradients of anything but the loss actually minimized (no extra backward passes).
"""
from __future__ import annotations

import inspect
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from solidrl.theory.predictors import PREDICTORS
from solidrl.trainer.algos import GRPO_STD_EPS, tis_two_sided
from solidrl.trainer.config import ConfigError
from solidrl.trainer.loop import NonFiniteError, StepContext, Trainer
from solidrl.trainer.rollout import Rollout, response_logits

from . import metrics as M

__all__ = ["GROUPS", "RECORDER_GROUPS", "Recorder", "attach", "parse_groups", "load_predictors", "PASS_KS",
           "run_scalars"]

F64 = torch.float64

GROUPS: dict[str, str] = {
    "entropy": "exact and sampled entropy of pi_old, token and sequence means",
    "step": "entropy/delta and kl/step from one extra forward after the optimizer step",
    "ref": "KL of pi_old to the frozen reference (cold start): exact both ways, k1, k2, k3",
    "grad": "per-group gradient norms and the update norm",
    "ratio": "importance ratio statistics and clip fractions",
    "mismatch": "training-inference mismatch of the sampled tokens' log-probs",
    "outcome": "reward spread, pass@k, response length max",
    "adv": "advantage statistics and the all-zero group fraction",
    "cov": "Cov(log pi, A) and the update weight on the top-20% entropy tokens",
    "pred": "registered predictors' outputs from the step's batch statistics",
    # the groups below are the other probes' (probes/probeset.py attaches each when its group is on)
    "offpolicy": "rollout ratio pi_old / pi_rollout, correction weights, token lags (probes/offpolicy.py)",
    "diagnostics": "why groups gave no signal, lengths by outcome, the sampler's offset (probes/diagnostics.py)",
    "loss_terms": "each loss term's logit gradient vs its formula, every probes.audit_every steps (probes/loss_audit.py)",
    "consistency": "log-probs under other micro-batch splits and paddings, every probes.audit_every steps "
                   "(probes/consistency.py)",
}
RECORDER_GROUPS = frozenset(("entropy", "step", "ref", "grad", "ratio", "mismatch", "outcome", "adv", "cov", "pred"))
"""The groups this module's Recorder serves; the rest of GROUPS belong to the probes probeset.py attaches."""
PASS_KS = (1, 2, 4)
"""pass@k is logged for these k that fit the group size, and for k = group size."""
TOP_ENTROPY_FRAC = 0.2


def parse_groups(spec: str) -> frozenset[str]:
    """'all' or a comma-separated list of GROUPS names; an unknown name is a ConfigError listing the known."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if names == ["all"]:
        return frozenset(GROUPS)
    unknown = [n for n in names if n not in GROUPS]
    if unknown:
        raise ConfigError(f"probes.groups: unknown probe group {unknown[0]!r}; known: all, {', '.join(GROUPS)}")
    return frozenset(names)


def load_predictors() -> dict[str, Callable[[dict[str, Tensor]], dict[str, float]]]:
    """name -> fn(stats) for every predictor registered in solidrl.theory.predictors.PREDICTORS."""
    return {n: PREDICTORS.get(n) for n in PREDICTORS.names()}


def run_scalars(cfg) -> dict[str, Tensor]:
    """The run's settings the predictors read, as 0-d float64 stats (docs/contracts.md, "Scalars").

    Written into every step's stats so `pred/*` follow the run's config (algo.eps_low / eps_high,
    offpolicy.tis_cap / icepop_low / icepop_high, the trainer's GRPO epsilon, optim.trust_region_kl); lr and group_size
    are written beside them by the recorder (lr from the optimizer: what the step actually used).
    """
    a, o = cfg.algo, cfg.offpolicy
    # the GRPO epsilon the run's advantage uses (grpo's `eps` parameter, docs/peers.md), else the trainer's default
    grpo_eps = cfg.entry_params("algo.advantage").get("eps", GRPO_STD_EPS) if a.advantage == "grpo" else GRPO_STD_EPS
    # tis_two_sided's floor and the sequence bounds on the ratio (mirrored for convention "verl_k1", algos._seq_keep)
    cp = cfg.entry_params("offpolicy.correction")
    tis_low = cp.get("low", inspect.signature(tis_two_sided).parameters["low"].default)
    seq_low, seq_high = o.seq_low, o.seq_high
    if cp.get("convention") == "verl_k1":
        seq_low, seq_high = (1 / o.seq_high if o.seq_high > 0 else math.inf), (1 / o.seq_low if o.seq_low > 0 else math.inf)
    vals = {"eps_low": a.eps_low, "eps_high": a.eps_high, "tis_cap": o.tis_cap, "icepop_low": o.icepop_low,
            "icepop_high": o.icepop_high, "grpo_std_eps": grpo_eps, "trust_region_kl": cfg.optim.trust_region_kl,
            "tis_low": tis_low, "seq_low": seq_low, "seq_high": seq_high}
    return {k: torch.tensor(float(v), dtype=F64) for k, v in vals.items()}


@dataclass
class _StepState:
    """What the recorder gathers over one step's hook points (discarded at step_end)."""

    sel: Tensor                       # [S, R] bool, response tokens
    old: dict[str, Tensor]            # [N] float64 softmax_stats of pi_old at response tokens (N = sel.sum())
    before: Optional[Tensor] = None   # [P] flat parameters before the step
    coef: Optional[Tensor] = None     # [S, R] float64, sum over updates of -d loss_u / d logp
    log_ratio: list[Tensor] = field(default_factory=list)   # per update, tokens in the loss
    ratio_adv: list[Tensor] = field(default_factory=list)
    group_sum: dict[str, float] = field(default_factory=dict)  # sum over updates of each group's grad norm
    updates: int = 0
    seconds: float = 0.0


class Recorder:
    """Records every probe of `groups` on the steps where step % every == 0 (see module docstring)."""

    def __init__(self, trainer: Trainer, groups: frozenset[str] | None = None):
        self.trainer = trainer
        p = trainer.cfg.probes
        self.enabled = p.enabled
        self.groups = parse_groups(p.groups) if groups is None else frozenset(groups)
        self.every = max(1, p.every)
        self.jvp_every = p.jvp_every
        self.jvp2_every = p.jvp2_every
        self.jvp3_every = p.jvp3_every
        self.jvp_mode, self.jvp_fd_h = p.jvp_mode, p.jvp_fd_h
        self.max_states = p.max_states
        self.save_stats = p.save_stats
        self.stats_dir = Path(trainer.out) / "stats"
        self.predictors = load_predictors() if "pred" in self.groups else {}
        self._warned: set[str] = set()
        named = [(n, q) for n, q in trainer.model.named_parameters() if q.requires_grad]
        self.params = [q for _, q in named]
        self.param_groups = [M.param_group(n) for n, _ in named]
        self.param_names = [n for n, _ in named]
        self._st: Optional[_StepState] = None

    # -- wiring --------------------------------------------------------------------------------
    def attach(self) -> "Recorder":
        if not self.enabled:
            return self
        if self.save_stats:
            self.stats_dir.mkdir(parents=True, exist_ok=True)
        t = self.trainer
        t.add_hook("after_rollout", self._timed(self.after_rollout))
        t.add_hook("after_backward", self._timed(self.after_backward))
        t.add_hook("step_end", self.step_end)  # times itself: it writes time/probes_s
        return self

    def _timed(self, fn: Callable[[StepContext], None]) -> Callable[[StepContext], None]:
        def hook(ctx: StepContext) -> None:
            t0 = time.perf_counter()
            fn(ctx)
            if self._st is not None:
                self._st.seconds += time.perf_counter() - t0
        return hook

    def _flat(self) -> Tensor:
        return torch.cat([q.detach().reshape(-1) for q in self.params])

    def _load_flat(self, vec: Tensor) -> None:
        """Copy a flat vector into the parameters (in place: optimizer state and aliases stay valid)."""
        off = 0
        for q in self.params:
            q.copy_(vec[off:off + q.numel()].view_as(q))
            off += q.numel()

    def probed(self, step: int) -> bool:
        return step % self.every == 0

    def _needs_snapshot(self, step: int) -> bool:
        return bool({"grad", "pred"} & self.groups) or self.save_stats or self._jvp_step(step)

    def _jvp_step(self, step: int) -> bool:
        return (self.jvp_every > 0 and step % self.jvp_every == 0) or self._logit_order(step) > 1

    def _logit_order(self, step: int) -> int:
        """The highest logit order this step's JVP probe computes: 3 (jvp3), 2 (jvp2) or 1 (jvp alone)."""
        for k, every in ((3, self.jvp3_every), (2, self.jvp2_every)):
            if every > 0 and step % every == 0:
                return k
        return 1

    # -- hooks ---------------------------------------------------------------------------------
    @torch.no_grad()
    def after_rollout(self, ctx: StepContext) -> None:
        if not self.probed(ctx.step):
            self._st = None
            return
        sel = ctx.rollout.response_mask > 0
        old = M.softmax_stats(ctx.old_logits[sel], ctx.rollout.response_ids[sel])
        st = _StepState(sel=sel, old=old)
        if self._needs_snapshot(ctx.step):
            st.before = self._flat()
        st.coef = torch.zeros(sel.shape, dtype=F64, device=sel.device)
        self._st = st

    @torch.no_grad()
    def after_backward(self, ctx: StepContext) -> None:
        st = self._st
        if st is None:
            return
        st.updates += 1
        idx = ctx.index
        if ctx.logp.grad is not None and st.coef is not None:
            st.coef[idx] -= ctx.logp.grad.to(F64)
        else:
            st.coef = None  # not computable this step
        if "ratio" in self.groups:
            m = ctx.mask[idx] > 0
            st.log_ratio.append((ctx.logp.detach().to(F64) - ctx.old_logp[idx].to(F64))[m])
            st.ratio_adv.append(ctx.advantages[idx][:, None].expand_as(m)[m])
        if "grad" in self.groups:
            grads = [q.grad for q in self.params]
            have = [i for i, g in enumerate(grads) if g is not None]
            norms = M.group_norms([grads[i] for i in have], [self.param_groups[i] for i in have])
            clip = ctx.cfg.optim.grad_clip
            # clip_grad_norm_ scaled the gradients by min(1, clip / (norm + 1e-6)) before this hook
            scale = min(1.0, clip / (ctx.grad_norm + 1e-6)) if clip > 0 else 1.0
            for g, v in norms.items():
                st.group_sum[g] = st.group_sum.get(g, 0.0) + v / scale

    @torch.no_grad()
    def step_end(self, ctx: StepContext) -> None:
        st = self._st
        if st is None:
            return
        t0 = time.perf_counter()
        row: dict[str, Any] = {}
        S = st.sel.shape[0]
        seq_index = torch.arange(S, device=st.sel.device)[:, None].expand_as(st.sel)[st.sel]
        adv_tok = ctx.advantages[seq_index].to(F64)
        loss_tok = ctx.mask[st.sel] > 0
        g = self.groups
        if "entropy" in g:
            self._entropy(row, st)
        sub = self._subset(ctx)
        if "step" in g:
            self._step_change(row, ctx, sub)
        if "ref" in g:
            self._ref(row, ctx, sub)
        update = None
        if st.before is not None:
            update = M.update_stats(st.before, self._flat(), float(ctx.optimizer.param_groups[0]["lr"]))
        if "grad" in g:
            for name, v in st.group_sum.items():
                row[f"grad/norm_{name}"] = v / st.updates
            for k, v in (update or {}).items():
                row[f"update/{k}"] = v
        if "ratio" in g and st.log_ratio:
            rs = M.ratio_stats(torch.cat(st.log_ratio), torch.cat(st.ratio_adv), ctx.cfg.algo.eps_low,
                               ctx.cfg.algo.eps_high, ctx.cfg.algo.dual_clip_c)
            row.update({f"ratio/{k}": v for k, v in rs.items()})
        rollout_logp = ctx.rollout.rollout_logp[st.sel].to(F64)
        if "mismatch" in g:
            self._mismatch(row, ctx, st, rollout_logp)
        if "outcome" in g:
            self._outcome(row, ctx)
        if "adv" in g:
            row.update({f"adv/{k}": v for k, v in M.advantage_stats(ctx.advantages, ctx.cfg.rollout.group_size).items()})
        coef = st.coef[st.sel] if st.coef is not None else None
        if "cov" in g and loss_tok.any():
            row["cov/logp_adv"] = M.cov_logp_adv(st.old["logp"][loss_tok], adv_tok[loss_tok])
            if coef is not None:
                w = M.top_frac_weight(st.old["entropy"][loss_tok], coef[loss_tok], TOP_ENTROPY_FRAC)
                if w is not None:
                    row["cov/top20_entropy_weight_frac"] = w
        if self.save_stats or self.predictors:
            stats = self._stats(ctx, st, loss_tok, seq_index, adv_tok, coef, rollout_logp, update)
            if self._jvp_step(ctx.step) and st.before is not None:
                stats.update(self._jvp(ctx, st, sub, loss_tok))
            if self.save_stats:
                torch.save(stats, self.stats_dir / f"step_{ctx.step:06d}.pt")
            row.update(self._predict(stats))
        self._st = None
        ctx.metrics.update(row)
        ctx.metrics["time/probes_s"] = st.seconds + time.perf_counter() - t0

    # -- pieces of step_end ----------------------------------------------------------------------
    def _entropy(self, row: dict, st: _StepState) -> None:
        h = st.old["entropy"]
        row["entropy/token_mean"] = float(h.mean())
        row["entropy/seq_mean"] = float(M.seq_mean(self._scatter(h, st.sel), st.sel))
        hs = M.sampled_entropy(st.old["logp"])
        row["entropy/sampled_token_mean"] = float(hs.mean())
        row["entropy/sampled_seq_mean"] = float(M.seq_mean(self._scatter(hs, st.sel), st.sel))

    @staticmethod
    def _scatter(x: Tensor, sel: Tensor) -> Tensor:
        out = torch.zeros(sel.shape, dtype=x.dtype, device=x.device)
        out[sel] = x
        return out

    def _subset(self, ctx: StepContext) -> Optional[Tensor]:
        """Rows for the expensive probes: all (None), or max_states sequences drawn with the step's seed."""
        S = ctx.rollout.response_ids.shape[0]
        if not self.max_states or self.max_states >= S:
            return None
        g = torch.Generator().manual_seed(ctx.cfg.run.seed * 1_000_003 + ctx.step * 7 + 5)
        return torch.randperm(S, generator=g)[: self.max_states].sort().values.to(ctx.rollout.response_ids.device)

    def _forward(self, model, ro: Rollout, what: str, ctx: StepContext) -> Tensor:
        with torch.inference_mode():
            logits = response_logits(model, ro)  # the path pi_old came from (groups' prompts run once)
        if not torch.isfinite(logits).all():
            raise NonFiniteError(  # the trainer records it as a collapse of kind 'nan', like its own guards
                f"step {ctx.step}: non-finite {what} (NaN/Inf); metrics up to step {ctx.step - 1} are kept in "
                f"{Path(ctx.trainer.out) / 'metrics.jsonl'}; lower optim.lr or enable a stabilizer", ctx.step)
        return logits

    def _rows(self, ctx: StepContext, sub: Optional[Tensor]) -> tuple[Rollout, Tensor, Tensor, Tensor]:
        ro = ctx.rollout if sub is None else ctx.rollout.select(sub)
        sel = ro.response_mask > 0
        old = ctx.old_logits if sub is None else ctx.old_logits[sub]
        return ro, sel, old[sel], ro.response_ids[sel]

    def _step_change(self, row: dict, ctx: StepContext, sub: Optional[Tensor]) -> None:
        ro, sel, old, ids = self._rows(ctx, sub)
        new = self._forward(ctx.model, ro, "new-policy logits (probe forward after the optimizer step)", ctx)[sel]
        ps = M.pair_stats(old, new, ids)
        row["entropy/delta"] = float((ps["entropy_q"] - ps["entropy_p"]).mean())
        row["entropy/new_token_mean"] = float(ps["entropy_q"].mean())
        row["kl/step"] = float(ps["kl_pq"].mean())
        row["kl/step_reverse"] = float(ps["kl_qp"].mean())
        for k, v in M.kl_sampled(ps["logp_p"], ps["logp_q"]).items():
            row[f"kl/step_{k}"] = float(v.mean())

    def _ref(self, row: dict, ctx: StepContext, sub: Optional[Tensor]) -> None:
        ro, sel, old, ids = self._rows(ctx, sub)
        if ctx.ref_logits is not None:
            ref = (ctx.ref_logits if sub is None else ctx.ref_logits[sub])[sel]
        else:
            ref = self._forward(ctx.ref_model, ro, "reference logits", ctx)[sel]
        ps = M.pair_stats(old, ref, ids)
        row["kl/ref_exact"] = float(ps["kl_pq"].mean())
        row["kl/ref_exact_reverse"] = float(ps["kl_qp"].mean())
        for k, v in M.kl_sampled(ps["logp_p"], ps["logp_q"]).items():
            row[f"kl/ref_{k}"] = float(v.mean())

    def _mismatch(self, row: dict, ctx: StepContext, st: _StepState, rollout_logp: Tensor) -> None:
        row.update({f"mismatch/{k}": v for k, v in M.mismatch_stats(st.old["logp"], rollout_logp).items()})
        full = getattr(ctx.rollout, "sampler_logprobs", None)  # [S, R, V] log q, only if the sampler kept it
        if full is not None:
            row["mismatch/kl_exact"] = float(M.kl_exact(full[st.sel], ctx.old_logits[st.sel]).mean())

    def _outcome(self, row: dict, ctx: StepContext) -> None:
        G = ctx.cfg.rollout.group_size
        correct = ctx.correct.reshape(-1, G)
        for k in sorted({k for k in PASS_KS if k <= G} | {G}):
            row[f"reward/pass@{k}"] = M.pass_at_k(correct, k)
        row["reward/std"] = float(ctx.rewards.to(F64).std(correction=0))
        row["response/length_max"] = float(ctx.rollout.lengths.max())

    def _stats(self, ctx: StepContext, st: _StepState, loss_tok: Tensor, seq_index: Tensor, adv_tok: Tensor,
               coef: Optional[Tensor], rollout_logp: Tensor, update: Optional[dict]) -> dict[str, Tensor]:
        """The per-step batch statistics of docs/contracts.md (loss tokens only, float64 / long)."""
        o = {k: v[loss_tok] for k, v in st.old.items()}
        ro = ctx.rollout
        S, G = ro.response_ids.shape[0], ctx.cfg.rollout.group_size
        stats: dict[str, Tensor] = {
            "logp": o["logp"], "entropy": o["entropy"], "sum_p2": o["sum_p2"],
            "sum_p2_logp": o["sum_p2_logp"], "sum_p3": o["sum_p3"],
            "adv": adv_tok[loss_tok], "seq_index": seq_index[loss_tok],
            # which token and where in its response (docs/contracts.md): predictors can single tokens out
            "token_id": ro.response_ids[st.sel][loss_tok].long(),
            "position": torch.arange(st.sel.shape[1], device=st.sel.device).expand_as(st.sel)[st.sel][loss_tok],
            "log_ratio": (st.old["logp"] - rollout_logp)[loss_tok],
            "reward": ctx.rewards.to(F64), "correct": ctx.correct.to(F64), "length": ro.lengths.to(F64),
            "truncated": ro.truncated.to(F64),
            "group_index": torch.arange(S, device=ro.response_ids.device) // G,
            "lr": torch.tensor(float(ctx.optimizer.param_groups[0]["lr"]), dtype=F64),
            "group_size": torch.tensor(G), "vocab_size": torch.tensor(ctx.old_logits.shape[-1]),
            "grad_norm": torch.tensor(float(ctx.metrics.get("grad/norm", ctx.grad_norm)), dtype=F64),
            **run_scalars(ctx.cfg),
        }
        if coef is not None:
            stats["coef"] = coef[loss_tok]
        if update is not None:
            stats["update_norm"] = torch.tensor(update["norm"], dtype=F64)
        return {k: v.detach().cpu() for k, v in stats.items()}

    def _jvp(self, ctx: StepContext, st: _StepState, sub: Optional[Tensor], loss_tok: Tensor) -> dict[str, Tensor]:
        """jvp_cov, jvp_var at pi_old: dz = J(s_t) (theta_after - theta_before), one forward-mode pass; on a
        jvp2 step also jvp2_* and jvp1s_* (dH, kl, kl_reverse) from dz1 and dz2 of one nested pass
        (derive_jvp2, derive_jvp1s), on a jvp3 step also jvp3_* from dz3 of a third nesting (derive_jvp3)."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        from solidrl.theory.kernel import (fd_taylor_logits, jvp_logit_change, jvp_taylor_logits, linearized_stats,
                                           logit_order_stats)

        after = self._flat()
        delta, off = {}, 0
        for n, q in zip(self.param_names, self.params):
            delta[n] = (after[off:off + q.numel()] - st.before[off:off + q.numel()]).view_as(q)
            off += q.numel()
        self._load_flat(st.before)  # evaluate at theta_before
        try:
            ro = ctx.rollout if sub is None else ctx.rollout.select(sub)
            ids, mask, pos, positions = ro.full_inputs()
            order = self._logit_order(ctx.step)
            with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
                if order > 1 and self.jvp_mode == "fd":  # the jvp plus two forwards (kernel.fd_taylor_logits)
                    logits, dzs = fd_taylor_logits(ctx.model, ids, mask, pos, delta, positions, self.jvp_fd_h)
                    dzs, dz = dzs[:order], dzs[0]
                elif order > 1:
                    logits, dzs = jvp_taylor_logits(ctx.model, ids, mask, pos, delta, positions, order)
                    dz = dzs[0]
                else:
                    dz, logits = jvp_logit_change(ctx.model, ids, mask, pos, delta, positions, return_logits=True)
        finally:
            self._load_flat(after)
        cov, var = linearized_stats(logits, dz)
        sel_sub = ro.response_mask > 0
        in_loss = (ctx.mask if sub is None else ctx.mask[sub])[sel_sub] > 0
        out = {"jvp_cov": cov[in_loss].cpu(), "jvp_var": var[in_loss].cpu()}
        if order > 1:
            out.update({k: v[in_loss].cpu() for k, v in logit_order_stats(logits, dzs).items()})
        if sub is not None:
            # positions of the evaluated tokens among the stats' tokens (loss tokens of all rows, row-major)
            rows_loss = torch.zeros(st.sel.shape, dtype=torch.bool, device=st.sel.device)
            rows_loss[st.sel] = loss_tok
            rank = torch.cumsum(rows_loss.reshape(-1).long(), 0).reshape(rows_loss.shape) - 1
            out["jvp_index"] = rank[sub][rows_loss[sub]].cpu()
        return out

    def _predict(self, stats: dict[str, Tensor]) -> dict[str, float]:
        out = {}
        for name, fn in self.predictors.items():
            try:
                res = fn(stats)
            except KeyError:
                continue  # a stat this predictor needs is not there on this step (e.g. jvp_*)
            except Exception as e:  # noqa: BLE001 - a predictor bug must not stop training; say it once
                if name not in self._warned:
                    self._warned.add(name)
                    warnings.warn(f"predictor {name!r} failed ({type(e).__name__}: {e}); its outputs are skipped")
                continue
            out.update({f"pred/{name}/{k}": float(v) for k, v in res.items()})
        return out


def attach(trainer: Trainer) -> Recorder:
    """Attach a Recorder configured by trainer.cfg.probes (no hooks when probes.enabled is false)."""
    return Recorder(trainer).attach()
