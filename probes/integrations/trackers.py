"""Experiment trackers for `--report-to` (the names transformers' `report_to` uses): tensorboard, wandb, trackio.

What is sent, for `solidrl train` and for each (arm, seed) run of probe-check:
  config      the TrainConfig flattened to dotted names (algo.advantage, ...) as hyperparameters
  rows        every row of metrics.jsonl at its `step`: numbers as scalars, strings (collapse/kind,
              collapse/reason) as text; null (not computable) is not sent, never sent as 0
and for probe-check's judgement, one more run `<hypothesis>/verdicts`: the verdict table as text
(report.md, markdown), each prediction's plot as an image, and the summary counts as scalars.

Rows are read back from metrics.jsonl as the trainer writes them (RowFollower): what a tracker shows
is exactly the file, including time/* and a NaN collapse's row, which the step_end hooks never see
(the loop adds them after the hooks). During a run, step k's row is sent at step k+1's step_end; the
rest when the run ends.

Where it goes:
  tensorboard  event files in `<run dir>/tensorboard/` (probe-check: `<out>/tensorboard/<arm>/seed<s>/`
               and `<out>/tensorboard/verdicts/`); `tensorboard --logdir <out>/tensorboard`
  wandb        project $WANDB_PROJECT (default "solidrl"), files under `<run dir>/wandb/`. With no API
               key ($WANDB_API_KEY or a `wandb login` entry in ~/.netrc) and no $WANDB_MODE, the mode is
               set to offline (one line says so): a run never waits on a network that is not there;
               `wandb sync <dir>/wandb/offline-run-*` uploads it later.
  trackio      project $TRACKIO_PROJECT (default "solidrl"), trackio's own local store ($TRACKIO_DIR,
               default $HF_HOME/trackio); `trackio show` opens it. Local unless $TRACKIO_SPACE_ID is set.

Each tracker is an optional extra: `pip install -e '.[tensorboard]'` (or wandb, trackio). A missing
package is found before any training (check_installed) and reported as one line naming the extra.

`--resume` starts new tracker runs that get the rows from the checkpoint's step on. A tracker that fails
(a network error, a full disk) is dropped with one line and the run goes on.

Left out on purpose: system metrics (GPU/CPU use), model checkpoints as artifacts, the counterfactual
shadow runs' rows (they stay in `cf-<arm>/metrics.jsonl`), and "all" (name the trackers you want).
"""
from __future__ import annotations

import html
import importlib.util
import json
import netrc
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

from solidrl.probes.errors import InputError
from solidrl.theory.registry import Registry
from solidrl.trainer.config import flatten

__all__ = ["TRACKERS", "Tracker", "TrackerError", "parse_report_to", "check_installed", "open_trackers", "RowFollower",
           "attach", "report_check"]


class Tracker:
    """One run in one tracker. Subclasses set `module` (what must import) and `extra` (pyproject extra)."""

    module = ""
    extra = ""

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)

    def start(self, run_name: str, config: dict[str, Any]) -> None:
        raise NotImplementedError

    def log(self, row: dict[str, Any], step: int) -> None:
        raise NotImplementedError

    def log_text(self, key: str, text: str, step: int) -> None:
        raise NotImplementedError

    def log_image(self, key: str, path: Path, step: int) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError


TRACKERS: Registry[type[Tracker]] = Registry("tracker (--report-to)")


class TrackerError(InputError):
    """A --report-to mistake (unknown name, package not installed): one line, exit code 2."""

    def __init__(self, msg: str):
        ValueError.__init__(self, f"--report-to: {msg}")
        self.file, self.field, self.msg = "<command line>", "--report-to", msg


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    """The row's numbers (bool as 0/1), without `step`; None (not computable) is left out."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float))}


def _texts(row: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in row.items() if isinstance(v, str)}


def _hparam(v: Any) -> Any:
    """Hyperparameter values the trackers accept: numbers, strings and bools; others as their repr."""
    return v if isinstance(v, (int, float, str, bool)) else json.dumps(v)


@TRACKERS.register("tensorboard")
class TensorBoard(Tracker):
    """torch.utils.tensorboard's SummaryWriter; config as hparams and as a text block (as transformers does)."""

    module = "tensorboard"
    extra = "tensorboard"

    def start(self, run_name, config):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.w = SummaryWriter(log_dir=str(self.log_dir))
        hp = {k: _hparam(v) for k, v in config.items()}
        self.w.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```", 0)
        # hparams into this run's own event file (SummaryWriter.add_hparams would make a sub-run)
        for summ in hparams(hp, {}):
            self.w.file_writer.add_summary(summ)

    def log(self, row, step):
        for k, v in _scalars(row).items():
            self.w.add_scalar(k, v, step)
        for k, v in _texts(row).items():
            self.w.add_text(k, v, step)

    def log_text(self, key, text, step):
        self.w.add_text(key, text, step)

    def log_image(self, key, path, step):
        import matplotlib.image

        img = matplotlib.image.imread(str(path))  # [H, W, C] float in [0, 1] for PNG
        self.w.add_image(key, img[..., :3], step, dataformats="HWC")

    def finish(self):
        self.w.close()


def _wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators(os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1])
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


_said_offline = False


@TRACKERS.register("wandb")
class WandB(Tracker):
    """wandb.init / wandb.log; offline unless an API key is there or $WANDB_MODE says otherwise."""

    module = "wandb"
    extra = "wandb"

    def start(self, run_name, config):
        import wandb

        global _said_offline
        mode = os.environ.get("WANDB_MODE")
        if mode is None and not _wandb_has_key():
            mode = "offline"
            if not _said_offline:  # once per process (probe-check opens one wandb run per arm and seed)
                _said_offline = True
                print(f"wandb: no API key, logging offline to {self.log_dir / 'wandb'} "
                      "(`wandb sync` uploads it; WANDB_MODE=online to change)", file=sys.stderr)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "solidrl"), name=run_name,
                              config=config, dir=str(self.log_dir), mode=mode, reinit="finish_previous",
                              settings=wandb.Settings(silent=True, console="off"))

    def log(self, row, step):
        vals: dict[str, Any] = dict(_scalars(row))
        vals.update(_texts(row))
        self.run.log(vals, step=step)

    def log_text(self, key, text, step):
        import wandb

        self.run.log({key: wandb.Html("<pre>" + html.escape(text) + "</pre>")}, step=step)

    def log_image(self, key, path, step):
        import wandb

        self.run.log({key: wandb.Image(str(path))}, step=step)

    def finish(self):
        self.run.finish()


@TRACKERS.register("trackio")
class Trackio(Tracker):
    """trackio.init / log / finish (its API follows wandb's); local store unless a Space is configured."""

    module = "trackio"
    extra = "trackio"

    def start(self, run_name, config):
        import trackio

        self.t = trackio
        self.run = trackio.init(project=os.environ.get("TRACKIO_PROJECT", "solidrl"), name=run_name,
                                config=config, embed=False, auto_log_gpu=False, auto_log_cpu=False)

    def log(self, row, step):
        self.t.log(_scalars(row), step=step)

    def log_text(self, key, text, step):
        self.t.log({key: self.t.Markdown(text)}, step=step)

    def log_image(self, key, path, step):
        self.t.log({key: self.t.Image(str(path))}, step=step)

    def finish(self):
        self.t.finish()


# ----------------------------------------------------------------------------------------------
# Choosing and checking


def parse_report_to(items: Optional[Iterable[str]]) -> tuple[str, ...]:
    """`--report-to tensorboard wandb` or `tensorboard,wandb` -> ('tensorboard', 'wandb'); 'none' -> ()."""
    names: list[str] = []
    for it in items or ():
        for n in it.split(","):
            n = n.strip()
            if n and n != "none" and n not in names:
                if n not in TRACKERS:
                    raise TrackerError(f"unknown tracker {n!r}; known: {', '.join(TRACKERS.names())}, none")
                names.append(n)
    return tuple(names)


def check_installed(names: Iterable[str]) -> None:
    """One line naming the extra to install for the first tracker whose package is missing."""
    for n in names:
        cls = TRACKERS.get(n)
        if importlib.util.find_spec(cls.module) is None:
            raise TrackerError(f"{n} needs the '{cls.module}' package; install it with "
                               f".venv/bin/pip install -e '.[{cls.extra}]' (or pip install 'solidrl[{cls.extra}]')")


class Multi:
    """Several trackers as one: each call goes to all of them. A tracker that raises is dropped with one
    line on stderr and the run goes on (metrics.jsonl is the record; a tracker is a copy of it)."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def __getattr__(self, name):
        def call(*a, **kw):
            for t in list(self.trackers):
                try:
                    getattr(t, name)(*a, **kw)
                except Exception as e:  # noqa: BLE001 - a tracker must not stop training
                    self.trackers.remove(t)
                    print(f"--report-to: {type(t).__name__.lower()} failed in {name} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); it gets nothing more, the run goes on",
                          file=sys.stderr)
        return call


def open_trackers(names: Iterable[str], run_name: str, config: dict[str, Any], tb_dir: Path,
                  files_dir: Path) -> Multi:
    """Start one run per tracker: tensorboard's event files go to `tb_dir`, wandb's run folder under `files_dir`."""
    m = Multi([TRACKERS.get(n)(tb_dir if n == "tensorboard" else files_dir) for n in names])
    m.start(run_name, config)
    return m


# ----------------------------------------------------------------------------------------------
# Rows as they are written


class RowFollower:
    """The complete lines a metrics.jsonl gained since the last call (the trainer flushes one row per step)."""

    def __init__(self, path: Path, from_end: bool = True):
        self.path = Path(path)
        self.pos = self.path.stat().st_size if (from_end and self.path.exists()) else 0

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        self.pos += end
        return [json.loads(x) for x in data[:end].decode().splitlines() if x.strip()]


def _send(tr: Multi, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        tr.log(r, int(r["step"]))


class TrainerReport:
    """`solidrl train --report-to`: a step_end hook sends the rows written so far; close() the rest."""

    def __init__(self, trainer, names: Iterable[str], run_name: Optional[str] = None):
        self.follow = RowFollower(trainer.out / "metrics.jsonl")
        self.tr = open_trackers(names, run_name or trainer.out.name, flatten(trainer.cfg.to_dict()),
                                trainer.out / "tensorboard", trainer.out)
        trainer.add_hook("step_end", lambda ctx: _send(self.tr, self.follow.rows()))

    def close(self) -> None:
        _send(self.tr, self.follow.rows())
        self.tr.finish()


def attach(trainer, names: Iterable[str]) -> Optional[TrainerReport]:
    """Send a trainer's config and rows to the named trackers (None when there are none); close() at the end."""
    names = tuple(names)
    return TrainerReport(trainer, names) if names else None


def report_check(names: Iterable[str], out: Path, name: str, runs: list[tuple[str, Path]], text: str,
                 plots: list[tuple[str, Path]], summary: dict[str, Any]) -> None:
    """probe-check: each run (tracker name, run dir) with its config.json and metrics.jsonl, then one
    `<name>/verdicts` run with the report's text, the plots as images and the summary as scalars.

    Runs are sent after they finished (probe-check's runs are built in probes/check/run.py); tensorboard
    writes `<out>/tensorboard/<run name minus the hypothesis>/`, wandb `<out>/wandb/`.
    """
    names = tuple(names)
    if not names:
        return
    for run_name, d in runs:
        cfg_file = d / "config.json"
        config = flatten(json.loads(cfg_file.read_text())) if cfg_file.exists() else {}
        tr = open_trackers(names, f"{name}/{run_name}", config, out / "tensorboard" / run_name, out)
        try:
            _send(tr, RowFollower(d / "metrics.jsonl", from_end=False).rows())
        finally:
            tr.finish()
    tr = open_trackers(names, f"{name}/verdicts", {"hypothesis": name, **{k: _hparam(v) for k, v in summary.items()}},
                       out / "tensorboard" / "verdicts", out)
    try:
        tr.log({f"verdicts/{k}": v for k, v in summary.items() if isinstance(v, (int, float))}, 0)
        tr.log_text("verdicts", text, 0)
        for key, path in plots:
            tr.log_image(key, path, 0)
    finally:
        tr.finish()
