"""solidrl plot: pairs found from the rows' keys, a PNG written, one-line errors for a non-run."""
from __future__ import annotations

import json

from solidrl.probes.commands.cli import main
from solidrl.probes.commands.plot import predicted_pairs
from solidrl.probes.rundir import points as series


def _rows():
    return [{"step": s, "reward/accuracy": 0.1 * s, "entropy/delta": -0.01 * s, "pred/jvp/entropy/delta": -0.011 * s,
             "pred/cov/entropy/delta": 0.0, "ratio/clip_frac": 0.0, "pred/clip_frac/ratio/clip_frac": 0.0,
             "pred/x/not/observed": 1.0, "kl/step": float("nan") if s == 1 else 0.001}
            for s in range(3)]


def test_pairs_need_the_observed_key_and_series_skip_non_finite():
    rows = _rows()
    assert predicted_pairs(rows) == {"entropy/delta": ["cov", "jvp"], "ratio/clip_frac": ["clip_frac"]}
    assert series(rows, "kl/step") == ([0, 2], [0.001, 0.001])


def test_plot_writes_a_png_and_skips_an_incomplete_last_line(tmp_path, capsys):
    d = tmp_path / "run"
    d.mkdir()
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in _rows()) + "\n{\"step\": 3, \"rew")
    assert main(["plot", str(d)]) == 0
    png = d / "trajectories.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert str(png) in capsys.readouterr().out


def test_plot_of_a_non_run_is_one_line(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no metrics.jsonl" in err and "solidrl train" in err
