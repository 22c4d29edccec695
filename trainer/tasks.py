"""Verifiable tasks: a seeded prompt generator plus an exact grader, registered by name.

The perfect baseline needs answers that are correct and exactly verifiable and a grader that is
right ~100% of the time; each grader here is tested on an exhaustive or large generated set
(tests/test_trainer_tasks.py) and `check_set()` gives the audit a set with known answers.

Every task renders a prompt as raw text (for the char-level models) and, for instruct models
with a chat template, as chat messages. A truncated response (no EOS within the budget) is
graded 0 by the trainer, whatever its text: an answer that was cut off is not an answer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from solidrl.theory.registry import Registry


@dataclass(frozen=True)
class Problem:
    prompt: str
    """Raw-text prompt, e.g. '12+34='."""
    answer: str
    """Canonical answer, e.g. '46'."""
    solution: str
    """Reference response used for the cold start (SFT), without EOS."""
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    question: str = ""
    """Natural-language question for instruct models (rendered through the chat template)."""


class Task:
    """Base class. Subclasses set `name`, `max_new_tokens` and implement `make` and `grade`."""

    name: str = ""
    max_new_tokens: int = 8
    """Default response budget (tokens incl. EOS) that truncates < 1% of cold-start responses."""
    chat: bool = False
    """True: prompts are `question` rendered through the model's chat template (instruct models only);
    False: the raw-text `prompt` (char-level models). See tokenizer.render_prompts."""
    grade_truncated: bool = False
    """False (the perfect baseline): a response without EOS within the budget is graded 0. True: the
    grader reads a truncated response too (a departure, for models that state an answer and ramble on)."""

    def sample(self, n: int, rng: np.random.Generator) -> list[Problem]:
        return [self.make(rng) for _ in range(n)]

    def make(self, rng: np.random.Generator) -> Problem:
        raise NotImplementedError  # abstract

    def grade(self, problem: Problem, response: str) -> float:
        """1.0 if the response states exactly the right answer, else 0.0."""
        raise NotImplementedError  # abstract

    def check_set(self) -> list[Problem]:
        """A fixed set of problems (exhaustive where small) for grader audits."""
        return self.sample(2000, np.random.default_rng(12345))


TASKS: Registry[type[Task]] = Registry("task", field="task.name")
task = TASKS.register
"""Public decorator (docs/plugins.md): `@task("name")` on a Task subclass; its __init__'s keyword-only
arguments are its parameters (`--set task.name.digits=3`)."""

_INT = re.compile(r"-?\d+")


def _exact_int(text: str) -> int | None:
    """The integer a string is, exactly ('046' is not canonical and is refused)."""
    t = text.strip()
    if not re.fullmatch(r"-?(0|[1-9]\d*)", t):
        return None
    return int(t)


def last_number(text: str) -> int | None:
    """The last integer an instruct model states ('3 + 2 = 5.' -> 5); None if none.

    Instruct models write 'The answer is 5' or '3 + 2 = 5' and sometimes ramble afterwards;
    we grade the number after the last '=' if there is one, else the last number in the text.
    """
    if "=" in text:
        after = text.rsplit("=", 1)[1]
        m = _INT.search(after)
        if m:
            return int(m.group())
    nums = _INT.findall(text)
    return int(nums[-1]) if nums else None


_NUM = r"(-?\d+(?:\.\d+)?)"
_EQ = re.compile(r"=\s*[*$\\(]*\s*" + _NUM)
_SAYS = re.compile(r"\b(?:is|equals?|equal to|makes|gives|results in|adds? up to)\s+"
                   r"(?:[A-Za-z]+\s+){0,2}?[*$\"']*" + _NUM, re.IGNORECASE)
_LEAD = re.compile(r"\s*[*$]*" + _NUM + r"(?![\d.]*\d)(?!\s*[-+*/×=])(?:[\s.,!*$]|$)")


def stated_answer(text: str) -> float | None:
    """The number an instruct model's response states as its result, or None if it states none.

    Instruct models state the answer first and then often ramble, and a truncated response may end
    mid-sentence, so the *first* statement counts, in this order of precedence:
      1. the first '= N'                          '6 + 9 = 15. Then 15 + 1 = 16'  -> 15
      2. else the first 'is/equals/makes/gives/results in/add up to N' (up to two filler words)
                                                  '6 + 9 is actually 15.'          -> 15
      3. else a response that opens with a number (not an expression)  '11. A classic answer' -> 11
    N may be negative or decimal ('= 11.5' -> 11.5, which no integer answer equals). Number words
    ('seven') are not read. Checked against hand labels of real SmolLM2-135M-Instruct outputs
    (tests/fixtures/smollm2_chat_addition.json), where `last_number` misreads rambling answers.
    """
    for rx in (_EQ, _SAYS):
        m = rx.search(text)
        if m:
            return float(m.group(1))
    m = _LEAD.match(text)
    return float(m.group(1)) if m else None


@TASKS.register("addition")
class Addition(Task):
    """Two-digit addition 'a+b=' -> 'c' (a, b uniform in [0, 99]); graded by exact string match."""

    name = "addition"
    digits = 2
    max_new_tokens = 6  # at most 3 answer digits + EOS; 2 spare

    def _problem(self, a: int, b: int, **meta) -> Problem:
        return Problem(prompt=f"{a}+{b}=", answer=str(a + b), solution=str(a + b),
                       meta={"a": a, "b": b, **meta}, question=f"What is {a}+{b}?")

    def make(self, rng):
        hi = 10 ** self.digits
        return self._problem(int(rng.integers(0, hi)), int(rng.integers(0, hi)))

    def grade(self, problem, response):
        v = _exact_int(response)
        return float(v is not None and v == int(problem.answer))

    def check_set(self):
        hi = 10 ** self.digits
        return [self._problem(a, b) for a in range(hi) for b in range(hi)]


@TASKS.register("addition_mixed")
class AdditionMixed(Addition):
    """Addition with a difficulty level per prompt: d-digit + d-digit, d in {1, 2, 3} uniformly.

    `meta['difficulty']` = d, so hard-prompt and pass@k hypotheses can be stated per level.
    """

    name = "addition_mixed"
    levels = (1, 2, 3)
    max_new_tokens = 7  # <= 4 answer digits + EOS

    def make(self, rng):
        d = int(rng.choice(self.levels))
        lo, hi = (0 if d == 1 else 10 ** (d - 1)), 10 ** d
        return self._problem(int(rng.integers(lo, hi)), int(rng.integers(lo, hi)), difficulty=d)

    def check_set(self):
        # Exhaustive over the 1- and 2-digit levels, a large sample of the 3-digit one.
        out = [self._problem(a, b, difficulty=1) for a in range(10) for b in range(10)]
        out += [self._problem(a, b, difficulty=2) for a in range(10, 100) for b in range(10, 100)]
        rng = np.random.default_rng(7)
        out += [self._problem(int(a), int(b), difficulty=3)
                for a, b in rng.integers(100, 1000, size=(3000, 2))]
        return out


@TASKS.register("sum_list")
class SumList(Task):
    """Sum a list of 2-6 digits with a scratchpad of running totals.

    Prompt 'sum:3,5,7>' ; reference solution '8,15=15' (running totals after each addition, then
    '=' and the total). The scratchpad's length varies with the list, so response length and
    truncation can move under RL. The grader reads only the final answer after the last '=': a
    model may drop the scratchpad (a length hypothesis can then act), but the answer must be
    exactly the sum, with nothing after it.
    """

    name = "sum_list"
    min_len, max_len = 2, 6
    max_new_tokens = 24  # longest reference is 5 totals (<=14 chars) + '=' + 2 digits + EOS = 18

    def _problem(self, xs: list[int]) -> Problem:
        totals = np.cumsum(xs).tolist()
        sol = ",".join(str(t) for t in totals[1:]) + f"={totals[-1]}"
        return Problem(prompt="sum:" + ",".join(map(str, xs)) + ">", answer=str(totals[-1]),
                       solution=sol, meta={"n": len(xs), "difficulty": len(xs)},
                       question="What is " + " + ".join(map(str, xs)) + "?")

    def make(self, rng):
        n = int(rng.integers(self.min_len, self.max_len + 1))
        return self._problem([int(x) for x in rng.integers(0, 10, size=n)])

    def grade(self, problem, response):
        if "=" not in response:
            return 0.0
        v = _exact_int(response.rsplit("=", 1)[1])
        return float(v is not None and v == int(problem.answer))


@TASKS.register("chat_addition")
class ChatAddition(Task):
    """Single-digit addition asked in words, 'What is 3+2?', for an instruct model (chat template).

    a, b uniform in 1..9. The grader reads the result the answer states first (`stated_answer`), so
    '3 + 2 = 5', 'The answer is 5.' and '5' are right and '3 + 2 = 6. Or 5' is wrong; it is tested
    on hand-labelled real SmolLM2-135M-Instruct outputs (tests/fixtures/smollm2_chat_addition.json).

    grade_truncated = True, a departure from the perfect baseline: at 24 new tokens SmolLM2-135M
    states its answer and rambles on, and ~85% of its responses hit the budget (measured, 128
    samples at T = 1). Graded 0, that leaves ~5% accuracy and 5 of 16 groups of 8 mixed; read, ~14%
    and 10 of 16 mixed: the RL signal is there only if truncated answers count. A larger budget
    costs time linearly and the rambling fills it. `response/truncated_frac` still reports it.
    """

    name = "chat_addition"
    chat = True
    grade_truncated = True
    max_new_tokens = 24

    def _problem(self, a: int, b: int) -> Problem:
        c = a + b
        return Problem(prompt=f"{a}+{b}=", answer=str(c), solution=f"{a} + {b} = {c}",
                       meta={"a": a, "b": b}, question=f"What is {a}+{b}?")

    def make(self, rng):
        return self._problem(int(rng.integers(1, 10)), int(rng.integers(1, 10)))

    def grade(self, problem, response):
        v = stated_answer(response)
        return float(v is not None and v == int(problem.answer))

    def check_set(self):
        # Exhaustive: 81 problems (the large-set rule of the other tasks does not apply).
        return [self._problem(a, b) for a in range(1, 10) for b in range(1, 10)]


def get_task(name: str, **params) -> Task:
    return TASKS.get(name)(**params)
