"""The pairwise judge: both orders, win rates, agreement with people, and the two ways to judge,
a local model and an OpenAI-compatible server on 127.0.0.1 (never a remote one)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from pedigree.config import ConfigError, JudgeConfig, JudgeEndpoint
from pedigree.errors import PedigreeError
from pedigree.evals.judge import (
    DEFAULT_TEMPLATE,
    OPTIONS,
    cohen_kappa,
    endpoint_verdicts,
    judge_candidate,
    judge_inputs,
    judge_pairs,
    load_template,
    model_verdicts,
    parse_verdict,
    read_calibration,
    render,
    run_judge,
    win_rate,
)
from pedigree.evals.scorers import EvalSetError
from tests.judge_server import model_answer, serve

REPO = Path(__file__).resolve().parents[1]


def _answers(prompt: str) -> tuple[str, str]:
    """Answer A and Answer B out of a prompt rendered from the built-in template."""
    a = prompt.split("Answer A:\n", 1)[1].split("\n\nAnswer B:\n", 1)
    return a[0], a[1].split("\n\nWhich answer is better?", 1)[0]


def prefers_good(prompt: str, max_tokens: int = 8) -> str:
    """A judge that knows: the answer saying "good" is better."""
    a, b = _answers(prompt)
    return "A" if "good" in a and "good" not in b else "B" if "good" in b and "good" not in a \
        else "tie"


def test_verdicts_are_read_by_their_first_word():
    assert parse_verdict("A") == "A" and parse_verdict(" b.") == "B"
    assert parse_verdict("Tie: both are fine") == "tie" and parse_verdict("**A**") == "A"
    assert parse_verdict("Answer A") is None and parse_verdict("") is None


def test_both_orders_cancel_a_judge_that_prefers_a_position():
    pairs = [("1", "p", "good answer", "bad answer"), ("2", "p", "bad", "good"),
             ("3", "p", "same", "same"), ("4", "p", "x", "y")]
    always_a = judge_pairs(lambda prompts: ["A"] * len(prompts), DEFAULT_TEMPLATE, pairs)
    assert {v["score"] for v in always_a.values()} == {0.5}  # every pair: a tie
    asked = []
    knows = judge_pairs(lambda prompts: asked.extend(prompts) or
                        [parse_verdict(prefers_good(p)) for p in prompts], DEFAULT_TEMPLATE, pairs)
    assert [knows[i]["score"] for i in "1234"] == [1.0, 0.0, 0.5, 0.5]
    assert knows["1"] == {"score": 1.0, "candidate_as_a": "A", "candidate_as_b": "B"}
    assert knows["3"]["candidate_as_a"] == "identical"
    assert len(asked) == 6  # identical answers are not sent; the others twice
    assert _answers(asked[0]) == ("good answer", "bad answer")
    assert _answers(asked[3]) == ("bad answer", "good answer")
    # One win and one tie is a win; an unreadable verdict counts as a tie.
    mixed = judge_pairs(lambda prompts: ["A", "tie"], DEFAULT_TEMPLATE, [("1", "p", "a", "b")])
    assert mixed["1"]["score"] == 1.0
    lost = judge_pairs(lambda prompts: [None, "A"], DEFAULT_TEMPLATE, [("1", "p", "a", "b")])
    assert lost["1"] == {"score": 0.0, "candidate_as_a": "unreadable", "candidate_as_b": "A"}


def test_win_rate_and_its_interval():
    judged = {str(i): {"score": s, "candidate_as_a": "A", "candidate_as_b": "B"}
              for i, s in enumerate([1.0, 1.0, 0.5, 0.0])}
    w = win_rate(judged)
    assert w["win_rate"] == pytest.approx(0.625)
    assert (w["wins"], w["ties"], w["losses"], w["n"]) == (2, 1, 1, 4)
    se = (sum((s - 0.625) ** 2 for s in [1, 1, 0.5, 0]) / 3 / 4) ** 0.5
    assert w["se"] == pytest.approx(se)
    assert w["ci95"] == pytest.approx([0.625 - 1.96 * se, min(1.0, 0.625 + 1.96 * se)])


def test_cohen_kappa():
    assert cohen_kappa(list("aabb"), list("abbb")) == pytest.approx(0.5)  # 0.75 seen, 0.5 chance
    assert cohen_kappa(list("ab"), list("ab")) == pytest.approx(1.0)
    assert cohen_kappa(list("aa"), list("aa")) is None  # chance agreement is total
    assert cohen_kappa(list("ab"), list("ba")) == pytest.approx(-1.0)


def test_templates_and_calibration_files_are_checked(tmp_path):
    bad = tmp_path / "judge.txt"
    bad.write_text("Which is better, {answer_a} or {answer_b}?")
    with pytest.raises(ConfigError, match=r"judge.txt: eval.judge.template lacks \{prompt\}"):
        load_template(bad)
    good = tmp_path / "good.txt"
    good.write_text('Request {prompt}\nA {answer_a}\nB {answer_b}\nReply {"verdict": ...}')
    text = load_template(good)
    assert render(text, "p", "x", "y").endswith('Reply {"verdict": ...}')  # braces kept
    cal = tmp_path / "judge_calibration.jsonl"
    row = {"id": "c1", "prompt": "p", "answer_a": "x", "answer_b": "y", "human": "a"}
    cal.write_text(json.dumps(row) + "\n" + json.dumps({**row, "id": "c2", "human": "A"}) + "\n")
    with pytest.raises(EvalSetError, match=r"judge_calibration.jsonl:2: human: must be"):
        read_calibration(cal)
    cal.write_text(json.dumps({**row, "answer_b": ""}) + "\n")
    with pytest.raises(EvalSetError, match=r"judge_calibration.jsonl:1: answer_b: a non-empty"):
        read_calibration(cal)


def test_the_shipped_calibration_set_reads():
    rows = read_calibration(REPO / "data/eval/judge_calibration.jsonl")
    assert len(rows) >= 20 and {r["human"] for r in rows} == {"a", "b", "tie"}
    assert len({r["id"] for r in rows}) == len(rows)


TASKS = [{"id": f"t{i}", "prompt": f"Say something about {i}."} for i in range(6)]


def _endpoint_cfg(url: str, **extra) -> JudgeConfig:
    return JudgeConfig(enabled=True, endpoint=JudgeEndpoint(url=url, model="ours", **extra))


def test_an_endpoint_judges_with_the_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-planted-judge-key-93")
    with serve(lambda prompt, _: prefers_good(prompt)) as server:
        cfg = _endpoint_cfg(server["url"], api_key_env="JUDGE_TEST_KEY")
        candidate = {t["id"]: "a good answer" for t in TASKS}
        base = {t["id"]: "an answer" for t in TASKS[:4]} | {"t4": "a good one",
                                                            "t5": "a good answer"}
        record = judge_candidate(endpoint_verdicts(cfg), DEFAULT_TEMPLATE, TASKS, candidate,
                                 {"base": base, "champion": "not promoted yet"}, None)
    assert record["against"]["base"]["win_rate"] == pytest.approx((4 + 0.5 + 0.5) / 6)
    assert record["against"]["champion"] == {"not_judged": "not promoted yet"}
    assert record["verdicts"]["base"]["t0"] == {"score": 1.0, "candidate_as_a": "A",
                                                "candidate_as_b": "B"}
    requests = server["requests"]
    assert len(requests) == 10  # t5's answers are identical: 5 pairs, both orders
    assert {r["authorization"] for r in requests} == {"Bearer sk-planted-judge-key-93"}
    assert {(r["body"]["model"], r["body"]["temperature"]) for r in requests} == {("ours", 0)}
    assert "sk-planted" not in json.dumps(record)


def test_endpoint_errors_are_clear(monkeypatch):
    monkeypatch.delenv("JUDGE_MISSING_KEY", raising=False)
    with pytest.raises(ConfigError, match="api_key_env=JUDGE_MISSING_KEY: that environment "
                       "variable is not set"):
        endpoint_verdicts(_endpoint_cfg("http://127.0.0.1:9/v1", api_key_env="JUDGE_MISSING_KEY"))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ask = endpoint_verdicts(_endpoint_cfg(f"http://user:pw@127.0.0.1:{port}/v1", timeout_s=5))
    with pytest.raises(PedigreeError, match=rf"judge endpoint http://127.0.0.1:{port}/v1/chat/"
                       r"completions: .*is the server running\?") as err:
        ask(["p"])
    assert "pw" not in str(err.value)
    with serve(lambda prompt, _: "A", path="/other") as server, \
            pytest.raises(PedigreeError, match="HTTP 404"):
        endpoint_verdicts(_endpoint_cfg(server["url"]))(["p"])


def test_a_local_model_judge_always_gives_a_verdict(micro_model_dir):
    verdicts = model_verdicts(micro_model_dir, False, batch_size=4)
    prompts = [render(DEFAULT_TEMPLATE, "Add 2 and 3.", "5", "7"),
               render(DEFAULT_TEMPLATE, "Add 2 and 3.", "7", "5")]
    got = verdicts(prompts)
    assert len(got) == 2 and set(got) <= set(OPTIONS)
    assert verdicts(prompts) == got  # deterministic


def test_run_judge_against_a_server_serving_a_model_of_ours(micro_model_dir, tmp_path):
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    rows = [{"id": f"c{i}", "prompt": f"Add {i} and 1.", "answer_a": str(i + 1),
             "answer_b": str(i + 2), "human": "a" if i % 2 else "b"} for i in range(4)]
    (eval_dir / "judge_calibration.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    answers = {"base": [f"answer {i}" for i in range(6)],
               "merged": [f"answer {i}" if i < 2 else f"better answer {i}" for i in range(6)]}
    champion = {"answers": {f"t{i}": f"champion {i}" for i in range(6)}}
    with serve(model_answer(micro_model_dir)) as server:
        cfg = _endpoint_cfg(server["url"])
        cfg = cfg.model_copy(update={"max_items": 5})
        record = run_judge(cfg, judge_inputs(cfg, eval_dir), False, 4, TASKS, "merged", answers,
                           champion)
    assert record["judge"]["endpoint"] == server["url"] and record["judge"]["model"] == "ours"
    base, champ = record["against"]["base"], record["against"]["champion"]
    assert base["n"] == 5 and champ["n"] == 5  # max_items
    assert base["wins"] + base["ties"] + base["losses"] == 5
    assert 0 <= base["ci95"][0] <= base["win_rate"] <= base["ci95"][1] <= 1
    assert record["verdicts"]["base"]["t0"]["candidate_as_a"] == "identical"
    # 3 differing base pairs + 5 champion pairs + 4 calibration pairs, each asked twice.
    assert len(server["requests"]) == 2 * (3 + 5 + 4)
    cal = record["calibration"]
    assert cal["n"] == 4 and 0 <= cal["agreement"] <= 1
    assert set(cal["verdicts"]) == {"c0", "c1", "c2", "c3"}
    assert all(v["judge"] in ("a", "b", "tie") for v in cal["verdicts"].values())
