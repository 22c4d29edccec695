"""Off-policy knobs through the real trainer: staleness, partial rollouts, low-precision / noisy sampling,
and the corrections' weights token by token (tiny nano runs; the cold start is cached per session)."""
import numpy as np
import pytest

from conftest import read_rows, tiny_overrides
from solidrl.probes import offpolicy
from solidrl.trainer.config import ConfigError, TrainConfig, apply_overrides
from solidrl.trainer.loop import Trainer, train


def cfg_of(**over):
    return apply_overrides(TrainConfig(), tiny_overrides(**{"probes.enabled": False, **over}))


def run_with(tmp_path, hook_point=None, hook=None, **over):
    def setup(t):
        offpolicy.attach(t)
        if hook is not None:
            t.add_hook(hook_point, hook)

    train(cfg_of(**over), tmp_path, progress=False, setup=setup)
    return read_rows(tmp_path)


def test_staleness_makes_ratios_off_one_with_log_variance_growing_in_k(tmp_path):
    # 16 prompts x 4 samples, 4 steps: at step s every token lags min(s, k) steps (k = 0: see the bf16 test).
    over = {"rollout.prompts_per_step": 16, "run.steps": 4}
    var = {k: [r["rollout_ratio/log_var"] for r in run_with(tmp_path / f"k{k}", **over, **{"offpolicy.staleness": k})]
           for k in (1, 3)}
    assert var[1][0] == var[3][0] < 1e-9  # step 0: both samplers are the initial policy, numerics only
    assert var[1][1] == var[3][1] > 1e-3  # step 1: one step of lag in both (same seed, same weights)
    assert min(var[1][1:]) > 1e-3  # one step of lag: ratios != 1
    assert var[3][3] > 2 * var[1][3] > 0  # three steps of lag spread the log-ratio more than one


def test_every_token_records_the_version_that_sampled_it(tmp_path):
    lags = []

    def grab(ctx):
        m = ctx.rollout.response_mask > 0
        lags.append(sorted(set((ctx.version - ctx.token_version)[m].tolist())))

    run_with(tmp_path / "stale", "after_rollout", grab, **{"offpolicy.staleness": 2, "run.steps": 4})
    assert lags == [[0], [1], [2], [2]]  # the initial policy stands in until 2 older snapshots exist
    lags.clear()
    # two updates per step (2 mini-batches): one step of staleness is two optimizer updates
    run_with(tmp_path / "mb", "after_rollout", grab, **{"offpolicy.staleness": 1, "offpolicy.mini_batches": 2,
                                                        "algo.policy_loss": "ppo_clip", "run.steps": 3})
    assert lags == [[0], [2], [2]]


def test_partial_rollouts_split_each_response_across_policy_versions(tmp_path):
    seen = []

    def grab(ctx):
        m = ctx.rollout.response_mask > 0
        lag = ctx.version - ctx.token_version
        x = (ctx.old_logp - ctx.rollout.rollout_logp).abs()
        seen.append((lag.clone(), m.clone(), x.clone()))

    # addition: budget 6, m = 2 -> segments of 3 tokens; segment 0 lags 1 step, segment 1 is current
    rows = run_with(tmp_path, "after_rollout", grab, **{"offpolicy.partial_versions": 2, "run.steps": 3})
    lag, m, x = seen[2]
    assert (lag[:, :3][m[:, :3]] == 1).all() and (lag[:, 3:][m[:, 3:]] == 0).all()
    assert m[:, 3:].any()  # some responses reach the second segment
    assert x[:, 3:][m[:, 3:]].max() < 1e-4  # fresh tokens: numerics only
    assert x[:, :3][m[:, :3]].max() > 1e-2  # stale tokens: the policy moved
    assert rows[2]["offpolicy/version_lag_max"] == 1 and 0 < rows[2]["offpolicy/version_lag_mean"] < 1
    assert rows[2]["mismatch/fresh_logp_abs_max"] < 1e-4


def test_partial_versions_must_be_positive():
    with pytest.raises(ConfigError, match="partial_versions"):
        Trainer(cfg_of(**{"offpolicy.partial_versions": 0}), "/nonexistent", progress=False)


def test_bf16_sampler_mismatches_and_the_fp32_default_does_not(tmp_path):
    def mismatch(**over):
        rows = run_with(tmp_path / str(len(over)) / "_".join(map(str, over.values())), **{"run.steps": 1, **over})
        return rows[0]["mismatch/fresh_logp_abs_max"], rows[0]["rollout_ratio/log_var"]

    fp32, bf16 = mismatch(), mismatch(**{"offpolicy.rollout_dtype": "bfloat16"})
    noise_lo, noise_hi = (mismatch(**{"offpolicy.logit_noise": s}) for s in (0.1, 1.0))
    assert fp32[0] < 1e-4 and fp32[1] < 1e-9
    assert bf16[0] > 1e-3 and bf16[1] > 1e3 * fp32[1]
    # a calibrated perturbation: the log-ratio spread grows with the noise's std
    assert fp32[1] < noise_lo[1] < noise_hi[1]


@pytest.mark.parametrize("name", ["tis", "icepop"])
def test_correction_weights_match_their_definitions_token_by_token(tmp_path, name):
    got = []

    def grab(ctx):
        got.append((ctx.old_logp.double().numpy(), ctx.rollout.rollout_logp.double().numpy(),
                    ctx.mask.numpy() > 0, ctx.weights.double().numpy()))

    rows = run_with(tmp_path, "after_rollout", grab, **{"offpolicy.staleness": 2, "offpolicy.correction": name,
                                                        "offpolicy.tis_cap": 1.2, "offpolicy.icepop_low": 0.8,
                                                        "offpolicy.icepop_high": 1.25})
    for (old, roll, m, w), row in zip(got, rows):
        rho = np.exp(old - roll)  # pi_old / pi_rollout, float64 reference
        if name == "tis":
            want = np.minimum(rho, 1.2)
            touched = rho > 1.2
        else:
            keep = (rho >= 0.8) & (rho <= 1.25)
            want = np.where(keep, rho, 0.0)
            touched = ~keep
        np.testing.assert_allclose(w[m], want[m], rtol=1e-5)  # float32 ratio in the trainer
        assert row["correction/touched_frac"] == pytest.approx(touched[m].mean(), abs=1e-12)
    assert rows[-1]["correction/touched_frac"] > 0  # two steps of lag: the thresholds bind
