"""One predictor contract (docs/contracts.md): every predictor is fn(stats) -> dict, and the run's settings
reach it through the stats, so `pred/*` follow the run's config.

Claims: every registered predictor takes exactly one parameter; on a tiny nano run with staleness (the
rollout ratio pi_old / pi_rollout != 1, so the clip and the caps have something to act on), two values of
algo.eps_low/eps_high give the same batches on step 0 and different pred/clip_frac values, equal to the
predictor recomputed from the saved stats with the run's eps written in; and offpolicy.tis_cap and
offpolicy.icepop_* move pred/tis/* and pred/icepop/* in the same way.
"""
from __future__ import annotations

import inspect

import torch

from conftest import read_rows, tiny_overrides
from solidrl.probes import offpolicy, recorder as R
from solidrl.theory.predictors import PREDICTORS
from solidrl.trainer.config import TrainConfig, apply_overrides
from solidrl.trainer.loop import train


def test_every_predictor_has_the_single_signature():
    """fn(stats) -> dict: one positional argument; anything else is a keyword-only entry parameter with a
    default (a plugin predictor's, set per prediction: docs/plugins.md), so fn(stats) always works.
    The built-ins read the run's settings from the stats and declare none."""
    for name in PREDICTORS.names():
        ps = list(inspect.signature(PREDICTORS.get(name)).parameters.values())
        assert [p.name for p in ps[:1]] == ["stats"] and ps[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, name
        rest = ps[1:]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
                   for p in rest), (name, [p.name for p in rest])
        if PREDICTORS.origin(name) == "built in":
            assert not rest, (name, [p.name for p in rest])


def _run(path, **over):
    cfg = apply_overrides(TrainConfig(), tiny_overrides(**{"run.steps": 2, "offpolicy.staleness": 1, **over}))

    def setup(t):
        R.attach(t)
        offpolicy.attach(t)

    train(cfg, path, progress=False, setup=setup)
    return read_rows(path)


def test_pred_clip_frac_tis_icepop_follow_the_runs_config(tmp_path):
    a = _run(tmp_path / "a", **{"algo.eps_low": 0.2, "algo.eps_high": 0.2, "offpolicy.tis_cap": 2.0,
                                 "offpolicy.icepop_low": 0.5, "offpolicy.icepop_high": 2.0})
    b = _run(tmp_path / "b", **{"algo.eps_low": 0.01, "algo.eps_high": 0.02, "offpolicy.tis_cap": 1.01,
                                 "offpolicy.icepop_low": 0.99, "offpolicy.icepop_high": 1.01})
    # step 1 is the first stale step (step 0 samples from the current policy)
    ra, rb = a[1], b[1]
    assert ra["rollout_ratio/log_var"] == rb["rollout_ratio/log_var"] > 0  # same batch, same spread
    for key in ("pred/clip_frac/ratio/clip_frac", "pred/clip_frac/rollout_ratio/clip_frac",
                "pred/tis/correction/touched_frac", "pred/icepop/correction/touched_frac"):
        assert rb[key] > ra[key], (key, ra[key], rb[key])  # tighter range / cap: more tokens clipped / touched
    st = torch.load(tmp_path / "b" / "stats" / "step_000001.pt", weights_only=True)
    assert (float(st["eps_low"]), float(st["eps_high"]), float(st["tis_cap"])) == (0.01, 0.02, 1.01)
    assert PREDICTORS.get("clip_frac")(st)["ratio/clip_frac"] == rb["pred/clip_frac/ratio/clip_frac"]
