import pytest

from occ_fast.data import ArithmeticTask, PromptSampler
from occ_fast.rewards import arithmetic_reward


def test_synthetic_answers_are_exact_and_seeded():
    task = ArithmeticTask(digits=3)
    records = task.sample("train", 200, seed=1)
    assert records == task.sample("train", 200, seed=1)
    assert records != task.sample("train", 200, seed=2)
    for r in records:
        a, op, b, eq = r.prompt.split()
        assert eq == "=" and 100 <= int(a) <= 999 and 100 <= int(b) <= 999
        assert int(r.answer) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert arithmetic_reward(f" {r.answer}", r.answer) == 1.0


def _canonical(prompt):
    a, op, b, _ = prompt.split()
    return (op, *sorted((a, b))) if op in "+*" else (op, a, b)


def test_train_and_eval_splits_never_overlap():
    # digits=1 makes the problem space tiny (300 problems), so any leak would show up
    task = ArithmeticTask(digits=1, eval_fraction=0.2)
    train = {_canonical(r.prompt) for seed in range(3) for r in task.sample("train", 150, seed=seed)}
    held_out = {_canonical(r.prompt) for r in task.sample("eval", 40, seed=0)}
    assert len(held_out) >= 30  # distinct problems ("3 + 5" and "5 + 3" count once)
    assert not train & held_out


def test_too_many_problems_for_the_difficulty_is_an_error():
    with pytest.raises(ValueError, match="cannot draw 500 distinct 'eval' problems with digits=1"):
        ArithmeticTask(digits=1).sample("eval", 500)


@pytest.mark.parametrize(
    "field,value", [("digits", 0), ("ops", ("/",)), ("eval_fraction", 1.0), ("template", "{a}")]
)
def test_task_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"ArithmeticTask.{field}"):
        ArithmeticTask(**{field: value})


def test_sampler_epochs_cover_everything_and_reshuffle():
    s = PromptSampler(10, seed=3)
    first, second = s.next_batch(10), s.next_batch(10)
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second
    assert PromptSampler(10, seed=3, shuffle=False).next_batch(12) == [*range(10), 0, 1]


def test_sampler_resume_gives_the_same_continuation():
    reference = PromptSampler(7, seed=11)
    for _ in range(3):
        reference.next_batch(3)  # mid-epoch, second epoch started
    state = reference.state_dict()
    expected = [reference.next_batch(4) for _ in range(5)]
    resumed = PromptSampler(7, seed=11)
    resumed.load_state_dict(state)
    assert [resumed.next_batch(4) for _ in range(5)] == expected


def test_sampler_refuses_a_state_from_another_dataset():
    state = PromptSampler(7, seed=11).state_dict()
    with pytest.raises(ValueError, match="num_items=7"):
        PromptSampler(8, seed=11).load_state_dict(state)
