"""GRPO's rewards: the eval scorers on sampled answers, named and weighted in align.grpo."""

from __future__ import annotations

import pytest

from pedigree.config import GRPO_REWARDS, AlignConfig, ConfigError, GRPOSettings
from pedigree.evals.scorers import MATCH_NAMES
from pedigree.train.rewards import ROW_COLUMNS, mean_reward, reward, reward_functions, task_columns

ADD = {"id": "a", "prompt": [], "match": "numeric", "reference": "155"}
CITY = {"id": "c", "prompt": [], "match": "normalised", "reference": "Paris"}
RECORD = {"id": "j", "prompt": [], "match": "json_valid",
          "schema": {"type": "object", "required": ["name"]}}


def _call(name: str, answers: list[str], rows: list[dict], **settings) -> list[float]:
    fn = reward(name, GRPOSettings.model_validate(settings))
    columns = [task_columns(r) for r in rows]
    # As TRL calls it: conversational completions, and the rows' columns as lists.
    completions = [[{"role": "assistant", "content": a}] for a in answers]
    return fn(completions, prompts=[r["prompt"] for r in rows],
              **{k: [c[k] for c in columns] for k in ROW_COLUMNS})


def test_every_scorer_is_a_reward():
    assert set(GRPO_REWARDS) == {"match", "format", *MATCH_NAMES}


def test_match_checks_each_row_by_its_own_matcher():
    answers = ["99 + 56 = 155", "paris.", '{"name": "Ada"}']
    assert _call("match", answers, [ADD, CITY, RECORD]) == [1.0, 1.0, 1.0]
    assert _call("match", ["154", "Lyon", '{"age": 3}'], [ADD, CITY, RECORD]) == [0.0, 0.0, 0.0]


def test_a_named_scorer_applies_to_every_row():
    assert _call("exact", ["155", " Paris ", "155"], [ADD, CITY, RECORD]) == [1.0, 1.0, 0.0]
    assert _call("normalised", ["155", "PARIS!"], [ADD, CITY]) == [1.0, 1.0]
    # json_valid without a schema asks only for JSON; with the row's schema, for a valid record.
    assert _call("json_valid", ["155", "Paris", "{}"], [ADD, CITY, RECORD]) == [1.0, 0.0, 0.0]


def test_format_rewards_a_full_match_of_the_stripped_answer():
    got = _call("format", ["  42 ", "42 apples", "x"], [ADD, ADD, ADD], rewards={"format": 1.0},
                format_regex=r"\d+")
    assert got == [1.0, 0.0, 0.0]


def test_weights_and_means():
    cfg = GRPOSettings.model_validate({"rewards": {"match": 1.0, "format": 0.5, "exact": 0.0},
                                       "format_regex": r"\d+"})
    functions, weights = reward_functions(cfg)
    assert [f.__name__ for f in functions] == ["match", "format"] and weights == [1.0, 0.5]
    got = mean_reward([ADD, ADD], ["155", "the sum is 155"], cfg)
    assert got == {"reward/match": 1.0, "reward/format": 0.5, "reward": 1.25}


@pytest.mark.parametrize(("values", "message"), [
    ({"grpo": {"rewards": {"bleu": 1.0}}}, "unknown rewards \\['bleu'\\]"),
    ({"grpo": {"rewards": {"match": 0.0}}}, "no reward with a non-zero weight"),
    ({"grpo": {"rewards": {"format": 1.0}}}, "format_regex is not set"),
    ({"grpo": {"format_regex": "(\\d"}}, "format_regex '\\(\\\\\\\\d'"),
    ({"method": "grpo", "batch_size": 6}, "not a multiple of grpo.num_generations=4"),
    ({"method": "dpo", "beta": 0.0}, "beta=0 is for grpo only"),
])
def test_bad_settings_are_refused_by_name(values, message):
    with pytest.raises(ValueError, match=message):
        AlignConfig.model_validate(values)


def test_the_schema_refuses_them_in_params(tmp_path):
    from pedigree.config import load_params

    (tmp_path / "params.yaml").write_text("align:\n  grpo:\n    rewards: {bleu: 1.0}\n")
    with pytest.raises(ConfigError, match="align.grpo.rewards"):
        load_params(tmp_path / "params.yaml")
