"""Lead-time hypotheses: spike leads and cross-correlation leads on synthetic series with a known lead."""
from pathlib import Path

from solidrl.probes.commands import leadtime as L

ROOT = Path(__file__).resolve().parents[1]


def _rows(x, y, kx="update/norm", ky="grad/norm"):
    return [{"step": t, kx: a, ky: b} for t, (a, b) in enumerate(zip(x, y))]


def test_a_spike_two_steps_ahead_is_found_with_lead_two():
    x = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 9.0, 1.0, 1.0, 1.0, 1.0]
    y = [2.0, 2.1, 1.9, 2.0, 2.05, 1.95, 2.0, 2.0, 2.1, 30.0, 2.0, 2.0]
    assert L.spikes(dict(enumerate(x)), 3.0, 5) == [7] and L.spikes(dict(enumerate(y)), 3.0, 5) == [9]
    h = L.load(ROOT / "hypotheses/early_warning/update_norm_precedes_grad_norm.toml")
    res = L.judge(h, [_rows(x, y)])
    assert res["verdict"] == "confirmed" and res["observed_lead"] == 2 and res["hit_frac"] == 1.0
    res = L.judge(h, [_rows(y, x)])  # swapped: the update spike now comes after
    assert res["verdict"] == "refuted"
    assert L.judge(h, [_rows(x, [2.0] * 12)])["verdict"] == "inconclusive"  # nothing to precede


def test_xcorr_finds_the_lag_and_the_sign():
    import random

    rng = random.Random(0)
    x = [rng.gauss(0, 1) for _ in range(40)]
    y = [0.0] + [-v + 0.1 * rng.gauss(0, 1) for v in x[:-1]]  # y_{t+1} = -x_t: lead 1, negative sign
    h = L.load(ROOT / "hypotheses/early_warning/entropy_drop_follows_cov.toml")
    res = L.judge(h, [_rows(x, y, "cov/logp_adv", "entropy/delta")])
    assert res["observed_lead"] == 1 and res["verdict"] == "refuted"  # predicted 0
    y0 = [-v for v in x]
    res = L.judge(h, [_rows(x, y0, "cov/logp_adv", "entropy/delta")])
    assert res["observed_lead"] == 0 and res["verdict"] == "confirmed" and res["r_at_observed"] == 1.0
