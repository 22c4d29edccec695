"""Fuzz: malformed hypothesis files and bad `solidrl train` / `probe-check` argument vectors.

Every generated case is invalid by construction (a required key deleted, a key duplicated, a wrong
type, a value out of its documented range, nesting past the parser's depth, a file that is not UTF-8,
a name too long or ending in a newline, an unknown flag...), and each must end the same way: exit
code 2, exactly one line on stderr, no traceback, nothing written anywhere (--out is not created).
The commands run in-process (their `main()`), always with --validate, so a case that were wrongly
accepted would exit 0 and fail the test rather than start training.

The fast sample (default run) draws 40 cases of each kind; the slow set draws 500 hypothesis files and
500 argument vectors (`pytest -m slow tests/test_commands_fuzz.py`).
"""
from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from solidrl.probes.commands import check as check_cmd
from solidrl.probes.commands import cli

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "hypotheses").glob("*.toml"))
TEXTS = [p.read_text() for p in SHIPPED]

# Values outside each field's documented range (trainer/config.py validate), as TOML and as --set text.
BAD_FIELDS = [
    ("rollout.top_p", "0"), ("rollout.top_p", "1.5"), ("rollout.top_k", "-1"), ("algo.eps_low", "-1"),
    ("algo.eps_low", "1.0"), ("optim.lr", "inf"), ("optim.lr", "nan"), ("optim.lr", "-1e-3"),
    ("rollout.prompts_per_step", "1000000000000000000"), ("rollout.prompts_per_step", "0"),
    ("rollout.group_size", "1"), ("rollout.group_size", "100000"), ("optim.weight_decay", "-1"),
    ("run.threads", "-1"), ("sft.max_steps", "0"), ("task.max_new_tokens", "0"),
    ("task.max_new_tokens", "100000000"), ("optim.name", '"lion"'), ("algo.advantage", '"nosuch"'),
    ("run.device", '"gpu"'), ("model.path", '"/nonexistent/model"'), ("nosuch.key", "1"),
    ("rollout.nosuch", "1"), ("offpolicy.staleness", "-2"), ("offpolicy.epochs", "0"),
    ("offpolicy.mini_batches", "7"), ("rollout.temperature", "0"), ("algo.dual_clip_c", "0.5"),
    ("offpolicy.logit_noise", "-1"), ("algo.kl_coef", "-0.1"), ("rollout.top_k", '"many"'),
    ("optim.lr", '"fast"'), ("sft.target_accuracy", "2"), ("offpolicy.tis_cap", "0"),
    ("probes.every", "0"), ("model.dtype", '"int8"'), ("optim.betas", "[2.0, 3.0]"),
]
BAD_STEPS = ["1e18", "0", "-1", '"ten"', "1000000000000000000", "nan", "inf", "[1]", "true", "2.5"]
BAD_NAMES = ['"x\\n"', '""', '"../up"', '"a/b"', '"has space"', "7", '"' + "n" * 300 + '"',
             '"' + "m" * 2000 + '"', '"\\u0000"']


def _set_key(text: str, key: str, value: str) -> str:
    """Replace the first `key = ...` line (single-line values) by `key = value`."""
    return re.sub(rf"(?m)^{re.escape(key)}\s*=.*$", lambda _: f"{key} = {value}", text, count=1)


@st.composite
def bad_hypothesis(draw) -> bytes:
    text = draw(st.sampled_from(TEXTS))
    kind = draw(st.sampled_from(["delete", "duplicate", "steps", "name", "arm", "nest", "encoding",
                                 "nul", "unknown", "type", "seeds", "arm_name", "metric"]))
    if kind == "delete":  # a required key gone (a multi-line claim leaves broken TOML: invalid either way)
        key = draw(st.sampled_from(["name", "claim"]))
        text = re.sub(rf"(?m)^{key}\s*=.*$", "", text, count=1)
    elif kind == "duplicate":
        line = re.search(r"(?m)^name\s*=.*$", text).group(0)
        text = text.replace(line, line + "\n" + line, 1)
    elif kind == "steps":
        text = _set_key(text, "steps", draw(st.sampled_from(BAD_STEPS)))
    elif kind == "name":
        text = _set_key(text, "name", draw(st.sampled_from(BAD_NAMES)))
    elif kind == "arm":  # an extra arm with one out-of-range override: every arm is validated
        k, v = draw(st.sampled_from(BAD_FIELDS))
        text += f"\n[arms.fuzz]\n{k} = {v}\n"
    elif kind == "nest":
        n = draw(st.integers(1100, 6000))
        opener = draw(st.sampled_from(["[", "{x = "]))
        closer = "]" if opener == "[" else "}"
        text = f"deep = {opener * n}1{closer * n}\n" + text
    elif kind == "encoding":
        how = draw(st.sampled_from(["latin1", "utf16", "bytes"]))
        if how == "latin1":
            return ("# café\n" + text).encode("latin-1")
        if how == "utf16":
            return text.encode("utf-16")
        pos = draw(st.integers(0, len(text)))
        return text[:pos].encode() + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\x80\x80", b"\xfe\xff"])) + text[pos:].encode()
    elif kind == "nul":
        text = "# \x00\n" + text
    elif kind == "unknown":
        text = "fuzz_unknown_key = 1\n" + text
    elif kind == "type":
        key, val = draw(st.sampled_from([("claim", "5"), ("name", "[1, 2]"), ("seeds", '"0"'),
                                         ("seeds", "[]"), ("seeds", "[-1]"), ("seeds", "[0, 0]"),
                                         ("seeds", "[1e18]"), ("seeds", "[" + ", ".join(map(str, range(1001))) + "]")]))
        text = _set_key(text, key, val) if re.search(rf"(?m)^{key}\s*=", text) else f"{key} = {val}\n" + text
        if key in ("claim", "name"):
            text = re.sub(rf'(?ms)^{key}\s*=\s*"""', f'_{key}_moved = """', text)  # a multi-line one
    elif kind == "seeds":
        text = _set_key(text, "seeds", draw(st.sampled_from(['"0"', "[]", "[-1]", "[0, 0]", "[4294967296]"])))
    elif kind == "arm_name":
        name = draw(st.sampled_from(['"' + "a" * 300 + '"', '"x\\n"', '"a b"', '"-x"']))
        text += f"\n[arms.{name}]\nalgo.advantage = \"rloo\"\n"
    elif kind == "metric":
        text = re.sub(r'(?m)^metric\s*=.*$', lambda _: 'metric = "reward/' + "x" * 300 + '\\n"', text, count=1)
    return text.encode()


ARGV_VALID = [["--set", "rollout.prompts_per_step=8"], ["--set", "rollout.group_size=4"], ["--quiet"]]


@st.composite
def bad_train_argv(draw, tmp: Path) -> list[str]:
    """A `solidrl train` argument vector with at least one mistake in it."""
    bad: list[list[str]] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set", "flag", "config", "unknown", "noeq", "out_file", "resume"]))
        if kind == "set":
            k, v = draw(st.sampled_from(BAD_FIELDS))
            bad.append(["--set", f"{k}={v.strip(chr(34))}" if not v.startswith("[") else f"{k}={v[1:-1]}"])
        elif kind == "flag":
            bad.append(draw(st.sampled_from([["--seed", "-1"], ["--seed", "99999999999"], ["--steps", "-3"],
                                             ["--steps", "1000000000000"], ["--device", "gpu"],
                                             ["--device", "cuda:99"], ["--model", "/no/such/dir"],
                                             ["--task", "nosuchtask"], ["--model-size", "giant"],
                                             ["--seed", "x"], ["--steps", "1e18"]])))
        elif kind == "config":
            name = draw(st.sampled_from(["latin1.toml", "dir.toml", "bad.toml", "deep.toml", "missing.toml",
                                         "badfield.toml"]))
            bad.append(["--config", str(tmp / "inputs" / name)])
        elif kind == "unknown":
            bad.append([draw(st.sampled_from(["--bogus", "--stepz", "-x", "--set"]))])
        elif kind == "noeq":
            bad.append(["--set", draw(st.sampled_from(["rollout.top_p", "novalue", "=1", "a.b.c=1"]))])
        elif kind == "out_file":
            bad.append(["--out", str(tmp / "inputs" / "bad.toml")])
        elif kind == "resume":
            bad.append(["--resume"])
    extra = draw(st.lists(st.sampled_from(ARGV_VALID), max_size=2))
    parts = draw(st.permutations(bad + extra))
    return ["train", "--out", str(tmp / "out"), "--validate"] + [a for p in parts for a in p]


@st.composite
def bad_check_argv(draw, tmp: Path) -> list[str]:
    """A `probe-check` argument vector with a valid file and at least one bad argument (or a bad file path)."""
    good = str(SHIPPED[0])
    kind = draw(st.sampled_from(["seeds", "steps", "threads", "file", "unknown", "combo"]))
    if kind == "seeds":
        bad = ["--seeds", draw(st.sampled_from(["x", "-1", "0,0", "1,a", "4294967296", "1e3"]))]
    elif kind == "steps":
        bad = ["--steps", draw(st.sampled_from(["0", "-5", "1000000000000", "x", "1e18"]))]
    elif kind == "threads":
        bad = ["--threads", draw(st.sampled_from(["-1", "99999", "x"]))]
    elif kind == "file":
        good = str(tmp / "inputs" / draw(st.sampled_from(["latin1.toml", "dir.toml", "bad.toml", "deep.toml",
                                                          "missing.toml"])))
        bad = []
    elif kind == "unknown":
        bad = [draw(st.sampled_from(["--bogus", "--seedz", "--steps"]))]
    else:
        bad = ["--from-run", str(tmp / "inputs" / "dir.toml")]
    return [good, "--out", str(tmp / "out"), "--validate", "--quiet", *bad]


def _inputs(tmp: Path) -> None:
    d = tmp / "inputs"
    d.mkdir(parents=True, exist_ok=True)
    (d / "latin1.toml").write_bytes("# café\n[rollout]\ngroup_size = 4\n".encode("latin-1"))
    (d / "dir.toml").mkdir(exist_ok=True)
    (d / "bad.toml").write_text("[rollout\ngroup_size = \n")
    (d / "deep.toml").write_text("x = " + "[" * 3000 + "]" * 3000 + "\n")
    (d / "badfield.toml").write_text("[rollout]\ntop_p = 0.0\n")


def _snapshot(tmp: Path) -> dict[str, int]:
    return {str(p.relative_to(tmp)): (p.stat().st_size if p.is_file() else -1) for p in tmp.rglob("*")}


def _run(main, argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's usage errors
            rc = e.code
    return rc, err.getvalue()


def _assert_refused(tmp: Path, before: dict, rc, err: str, what) -> None:
    lines = err.splitlines()
    assert rc == 2, (what, rc, err)
    assert len(lines) == 1, (what, err)
    assert "Traceback" not in err, (what, err)
    assert not (tmp / "out").exists(), what
    assert _snapshot(tmp) == before, what


def _hyp_case(tmp: Path, data: bytes) -> None:
    f = tmp / "inputs" / "fuzz.toml"
    f.write_bytes(data)
    before = _snapshot(tmp)
    rc, err = _run(check_cmd.main, [str(f), "--out", str(tmp / "out"), "--validate", "--quiet"])
    _assert_refused(tmp, before, rc, err, data[:200])


FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=500, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


def _hyp_test(tmp_path_factory, cfg):
    tmp = tmp_path_factory.mktemp("fuzzhyp")
    _inputs(tmp)
    cwd = os.getcwd()
    os.chdir(tmp)  # the default --out is relative: nothing may appear in the working directory either
    try:
        cfg(given(bad_hypothesis())(lambda data: _hyp_case(tmp, data)))()
    finally:
        os.chdir(cwd)


def _argv_test(tmp_path_factory, cfg, main, strategy):
    tmp = tmp_path_factory.mktemp("fuzzargv")
    _inputs(tmp)

    def case(argv):
        before = _snapshot(tmp)
        rc, err = _run(main, argv)
        _assert_refused(tmp, before, rc, err, argv)

    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        cfg(given(strategy(tmp))(case))()
    finally:
        os.chdir(cwd)


def test_fuzz_hypothesis_files_fast(tmp_path_factory):
    _hyp_test(tmp_path_factory, FAST)


def test_fuzz_train_argv_fast(tmp_path_factory):
    _argv_test(tmp_path_factory, FAST, cli.main, bad_train_argv)


def test_fuzz_check_argv_fast(tmp_path_factory):
    _argv_test(tmp_path_factory, settings(FAST, max_examples=20), check_cmd.main, bad_check_argv)


@pytest.mark.slow
def test_fuzz_hypothesis_files_500(tmp_path_factory):
    _hyp_test(tmp_path_factory, SLOW)


@pytest.mark.slow
def test_fuzz_train_argv_500(tmp_path_factory):
    _argv_test(tmp_path_factory, SLOW, cli.main, bad_train_argv)


@pytest.mark.slow
def test_fuzz_check_argv_200(tmp_path_factory):
    _argv_test(tmp_path_factory, settings(SLOW, max_examples=200), check_cmd.main, bad_check_argv)


def test_every_shipped_hypothesis_validates(tmp_path, capsys):
    """The control: the unmutated files pass --validate (exit 0), and --validate writes nothing."""
    from solidrl.trainer.model import ModelLoadError, load_pretrained

    try:
        load_pretrained("smollm2-135m")
        have_smollm2 = True
    except ModelLoadError:
        have_smollm2 = False
    for f in SHIPPED:
        rc = check_cmd.main([str(f), "--out", str(tmp_path / "out"), "--validate", "--quiet"])
        err = capsys.readouterr().err
        if "smollm2" in f.read_text() and not have_smollm2:  # its model is an optional package: one line
            assert rc == 2 and "smollm2" in err and len(err.splitlines()) == 1, (f, err)
        else:
            assert rc == 0, (f, err)
        assert not (tmp_path / "out").exists()


def test_unwritable_out_is_one_line_and_nothing_made(tmp_path, monkeypatch):
    """A read-only --out (simulated: the tests run as root, for whom chmod does not bite) is refused up front."""
    from solidrl.probes.commands import common

    real = os.access
    monkeypatch.setattr(common.os, "access", lambda p, m: False if str(p).startswith(str(tmp_path)) else real(p, m))
    for main, argv in ((cli.main, ["train", "--out", str(tmp_path / "ro" / "out"), "--quiet"]),
                       (check_cmd.main, [str(SHIPPED[0]), "--out", str(tmp_path / "ro" / "out"), "--quiet"])):
        rc, err = _run(main, argv)
        assert rc == 2 and len(err.splitlines()) == 1 and "not writable" in err, err
        assert not (tmp_path / "ro").exists()


def test_a_write_error_mid_run_is_one_line(tmp_path, monkeypatch):
    """ENOSPC/EROFS from the trainer's first write (config.json) is one line, exit 2."""
    import errno

    from solidrl.trainer import loop

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "config.json"))

    monkeypatch.setattr(loop, "atomic_write_text", full)
    rc, err = _run(cli.main, ["train", "--out", str(tmp_path / "out"), "--quiet", "--set", "rollout.prompts_per_step=8",
                              "--set", "rollout.group_size=4", "--steps", "1"])
    assert rc == 2 and len(err.splitlines()) == 1 and "No space left" in err, err
