"""Graders are exact: right on every case of an exhaustive or large generated set."""
import numpy as np
import pytest

from solidrl.trainer.tasks import TASKS, get_task, last_number


@pytest.mark.parametrize("name", TASKS.names())
def test_grader_accepts_every_reference_solution(name):
    task = get_task(name)
    probs = task.check_set()
    assert len(probs) >= 2000 or name == "chat_addition"  # chat_addition's 81 problems are exhaustive
    assert all(task.grade(p, p.solution) == 1.0 for p in probs)


@pytest.mark.parametrize("name", TASKS.names())
def test_grader_rejects_every_off_by_one_answer(name):
    task = get_task(name)
    for p in task.check_set()[:3000]:
        wrong = str(int(p.answer) + 1)
        resp = p.solution[: len(p.solution) - len(p.answer)] + wrong
        assert task.grade(p, resp) == 0.0, (p, resp)


def test_addition_check_set_is_exhaustive_and_answers_are_sums():
    probs = get_task("addition").check_set()
    assert len(probs) == 100 * 100
    assert all(int(p.answer) == p.meta["a"] + p.meta["b"] for p in probs)
    assert {p.prompt for p in probs} == {f"{a}+{b}=" for a in range(100) for b in range(100)}


@pytest.mark.parametrize("resp", ["046", " 46x", "4 6", "", "46=", "+46", "46.0"])
def test_addition_grader_refuses_non_canonical_answers(resp):
    task = get_task("addition")
    p = task._problem(12, 34)
    assert task.grade(p, resp) == 0.0


def test_sum_list_reference_has_running_totals():
    task = get_task("sum_list")
    p = task._problem([3, 5, 7])
    assert (p.prompt, p.solution, p.answer) == ("sum:3,5,7>", "8,15=15", "15")
    # The grader reads only the final answer: dropping the scratchpad is still correct.
    assert task.grade(p, "=15") == 1.0
    assert task.grade(p, "8,15=15,") == 0.0
    assert task.grade(p, "8,15") == 0.0


def test_sum_list_reference_fits_the_budget_with_eos():
    task = get_task("sum_list")
    longest = max(len(p.solution) for p in task.check_set())
    assert longest + 1 <= task.max_new_tokens


def test_addition_mixed_carries_difficulty_levels():
    task = get_task("addition_mixed")
    probs = task.sample(3000, np.random.default_rng(0))
    levels = {p.meta["difficulty"] for p in probs}
    assert levels == {1, 2, 3}
    for p in probs:
        d = p.meta["difficulty"]
        assert len(str(p.meta["a"])) == d and len(str(p.meta["b"])) == d


@pytest.mark.parametrize("name", TASKS.names())
def test_sampling_is_deterministic_in_the_seed(name):
    task = get_task(name)
    a = task.sample(50, np.random.default_rng([3, 7]))
    b = task.sample(50, np.random.default_rng([3, 7]))
    c = task.sample(50, np.random.default_rng([3, 8]))
    assert [p.prompt for p in a] == [p.prompt for p in b]
    assert [p.prompt for p in a] != [p.prompt for p in c]


@pytest.mark.parametrize("text,value", [("3 + 2 = 5", 5), ("The answer is 12.", 12),
                                        ("3 + 2 = 5. Then 4 more", 5), ("no number", None),
                                        ("-3", -3)])
def test_last_number_reads_the_stated_answer(text, value):
    assert last_number(text) == value
