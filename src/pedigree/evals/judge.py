"""A pairwise judge of open answers: a third model says which of two answers to a prompt is better.

Each pair is judged twice, the candidate's answer first as A and then as B, so that a judge that
prefers a position cancels out: +1 for a verdict for the candidate, -1 against, 0 for a tie or an
unreadable verdict, summed over the two orders: above 0 is a win (1), below a loss (0), else a
tie (0.5). Two identical answers are a tie without asking. The win rate is the mean of those
scores over the prompts, with a 95 % normal-approximation interval.

The judge is a local model (`eval.judge.model`: its verdict is whichever of "A", "B" and "tie"
it gives the highest likelihood as its answer, so it is always readable) or an OpenAI-compatible
server (`eval.judge.endpoint`: greedy text, read by its first word). The server's key is read
from the environment variable the config names and sent as a Bearer token; only the variable's
name is ever written.

Calibration: rows of `data/eval/judge_calibration.jsonl` ({"id", "prompt", "answer_a",
"answer_b", "human": "a" | "b" | "tie"}) are judged the same way; the judge's agreement with the
humans and Cohen's kappa (agreement beyond chance) say how far to trust its win rates.

No torch at import: the local judge loads its model when it is built.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pedigree.config import ConfigError, JudgeConfig
from pedigree.errors import PedigreeError
from pedigree.evals.eval_rows import read_rows
from pedigree.evals.scorers import EvalSetError
from pedigree.urls import public_url

CALIBRATION_FILE = "judge_calibration.jsonl"  # in data.eval_dir
PLACEHOLDERS = ("{prompt}", "{answer_a}", "{answer_b}")
DEFAULT_TEMPLATE = """Two assistants answered the same request. Judge which answer is better: \
correct, helpful, and in the form the request asks for. Length is not quality.

Request:
{prompt}

Answer A:
{answer_a}

Answer B:
{answer_b}

Which answer is better? Reply with one word: A, B or tie."""
OPTIONS = ("A", "B", "tie")

Verdicts = Callable[[list[str]], list[str | None]]  # judging prompts -> "A", "B", "tie" or None


def load_template(path: Path | None) -> str:
    if path is None:
        return DEFAULT_TEMPLATE
    text = path.read_text(encoding="utf-8")
    missing = [p for p in PLACEHOLDERS if p not in text]
    if missing:
        raise ConfigError(f"{path}: eval.judge.template lacks {', '.join(missing)}; a judging "
                          f"prompt holds all of {', '.join(PLACEHOLDERS)}")
    return text


def render(template: str, prompt: str, answer_a: str, answer_b: str) -> str:
    # Plain replacement, not str.format: a template may hold braces (a JSON example).
    return (template.replace("{prompt}", prompt).replace("{answer_a}", answer_a)
            .replace("{answer_b}", answer_b))


def parse_verdict(text: str) -> str | None:
    """"A", "B" or "tie" from a judge's answer (its first word, any case); None otherwise."""
    match = re.match(r"\W*([A-Za-z]+)", text)
    word = match.group(1).lower() if match else ""
    return {"a": "A", "b": "B", "tie": "tie"}.get(word)


def _points(verdict: str | None, candidate_is: str) -> int:
    if verdict not in ("A", "B"):
        return 0  # a tie or an unreadable verdict
    return 1 if verdict == candidate_is else -1


def judge_pairs(verdicts: Verdicts, template: str,
                pairs: Sequence[tuple[str, str, str, str]]) -> dict[str, dict[str, Any]]:
    """{id: {"score": 1 | 0.5 | 0, "candidate_as_a": verdict, "candidate_as_b": verdict}} for
    (id, prompt, candidate's answer, other's answer) pairs; identical answers are not sent."""
    asked = [p for p in pairs if p[2].strip() != p[3].strip()]
    prompts = [render(template, prompt, cand, other) for _, prompt, cand, other in asked]
    prompts += [render(template, prompt, other, cand) for _, prompt, cand, other in asked]
    got = verdicts(prompts) if prompts else []
    first, second = got[: len(asked)], got[len(asked):]
    out: dict[str, dict[str, Any]] = {}
    for pair_id, *_ in pairs:
        out[pair_id] = {"score": 0.5, "candidate_as_a": "identical", "candidate_as_b": "identical"}
    for (pair_id, *_), v1, v2 in zip(asked, first, second, strict=True):
        total = _points(v1, "A") + _points(v2, "B")
        out[pair_id] = {"score": 1.0 if total > 0 else 0.0 if total < 0 else 0.5,
                        "candidate_as_a": v1 or "unreadable", "candidate_as_b": v2 or "unreadable"}
    return out


def win_rate(judged: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The mean score with its 95 % interval (normal approximation, clipped to [0, 1]), and the
    counts behind it."""
    scores = [v["score"] for v in judged.values()]
    n = len(scores)
    mean = sum(scores) / n
    se = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1) / n) if n > 1 else 0.0
    unreadable = sum(v[k] == "unreadable" for v in judged.values()
                     for k in ("candidate_as_a", "candidate_as_b"))
    return {"win_rate": mean, "ci95": [max(0.0, mean - 1.96 * se), min(1.0, mean + 1.96 * se)],
            "se": se, "n": n, "wins": scores.count(1.0), "ties": scores.count(0.5),
            "losses": scores.count(0.0), "unreadable_verdicts": unreadable}


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Agreement beyond chance between two labelings of the same items; None when chance
    agreement is already total (both gave one label to everything)."""
    n = len(first)
    labels = sorted(set(first) | set(second))
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    chance = sum((first.count(c) / n) * (second.count(c) / n) for c in labels)
    return None if chance == 1 else (observed - chance) / (1 - chance)


def _check_human(row: dict[str, Any], where: str) -> None:
    if row.get("human") not in ("a", "b", "tie"):
        raise EvalSetError(f"{where}: human: must be \"a\", \"b\" or \"tie\" (the people's "
                           f"preference), got {row.get('human')!r}")


def read_calibration(path: Path) -> list[dict[str, str]]:
    rows = read_rows(path, ("id", "prompt", "answer_a", "answer_b"), _check_human)
    if not rows:
        raise EvalSetError(f"{path}: no rows; delete the file or label some pairs")
    return rows


def calibrate(verdicts: Verdicts, template: str, rows: list[dict[str, str]]) -> dict[str, Any]:
    """The judge against the humans on labelled pairs: agreement and Cohen's kappa."""
    judged = judge_pairs(verdicts, template, [(r["id"], r["prompt"], r["answer_a"], r["answer_b"])
                                              for r in rows])
    said = [{1.0: "a", 0.0: "b"}.get(judged[r["id"]]["score"], "tie") for r in rows]
    humans = [r["human"] for r in rows]
    return {"n": len(rows), "agreement": sum(a == b for a, b in zip(said, humans, strict=True))
            / len(rows), "kappa": cohen_kappa(said, humans),
            "verdicts": {r["id"]: {"judge": s, "human": r["human"]}
                         for r, s in zip(rows, said, strict=True)}}


def endpoint_verdicts(cfg: JudgeConfig) -> Verdicts:
    """Verdicts from an OpenAI-compatible /chat/completions endpoint, greedy, one request a
    prompt."""
    endpoint = cfg.endpoint
    assert endpoint is not None
    headers = {"Content-Type": "application/json"}
    if endpoint.api_key_env:
        key = os.environ.get(endpoint.api_key_env)
        if not key:
            raise ConfigError(f"eval.judge.endpoint.api_key_env={endpoint.api_key_env}: that "
                              "environment variable is not set; export the key in it")
        headers["Authorization"] = f"Bearer {key}"
    url = endpoint.url.rstrip("/") + "/chat/completions"
    shown = public_url(url)

    def ask(prompt: str) -> str | None:
        body = json.dumps({"model": endpoint.model, "temperature": 0, "seed": 0,
                           "max_tokens": cfg.max_new_tokens,
                           "messages": [{"role": "user", "content": prompt}]}).encode()
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=endpoint.timeout_s) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise PedigreeError(f"judge endpoint {shown}: HTTP {err.code} "
                                f"{err.read()[:200].decode(errors='replace')}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise PedigreeError(f"judge endpoint {shown}: {getattr(err, 'reason', err)}; is the "
                                "server running?") from None
        except json.JSONDecodeError:
            raise PedigreeError(f"judge endpoint {shown}: the reply is not JSON") from None
        try:
            return parse_verdict(reply["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise PedigreeError(f"judge endpoint {shown}: no choices[0].message.content in the "
                                "reply: not an OpenAI-compatible chat completion") from None

    return lambda prompts: [ask(p) for p in prompts]


def model_verdicts(path: Path, trust_remote_code: bool, batch_size: int) -> Verdicts:
    """Verdicts of a local model: the option among A, B and tie whose answer, through the
    model's chat template, has the lowest summed negative log-likelihood."""
    from pedigree.model.load import load_causal_lm, load_tokenizer
    from pedigree.model.measure import completion_nll

    model = load_causal_lm(path, trust_remote_code)
    tokenizer = load_tokenizer(path, trust_remote_code)

    def verdicts(prompts: list[str]) -> list[str | None]:
        rows = [{"prompt": [{"role": "user", "content": p}],
                 "completion": [{"role": "assistant", "content": option}]}
                for p in prompts for option in OPTIONS]
        nll = completion_nll(model, tokenizer, rows, max_length=None, batch_size=batch_size)
        return [min(OPTIONS, key=lambda o, i=i: nll[i * len(OPTIONS) + OPTIONS.index(o)][0])
                for i in range(len(prompts))]

    return verdicts


def describe(cfg: JudgeConfig, template: str) -> dict[str, Any]:
    """Who judged, as metrics/judge.json records it (never the key)."""
    who: dict[str, Any] = {"template_sha256": hashlib.sha256(template.encode()).hexdigest(),
                           "template": cfg.template or "built-in"}
    if cfg.endpoint is not None:
        who.update(endpoint=public_url(cfg.endpoint.url), model=cfg.endpoint.model,
                   api_key_env=cfg.endpoint.api_key_env)
    else:
        who["model"] = cfg.model
    return who


def judge_candidate(verdicts: Verdicts, template: str, tasks: list[dict[str, Any]],
                    candidate: dict[str, str], opponents: dict[str, dict[str, str] | str],
                    calibration: list[dict[str, str]] | None) -> dict[str, Any]:
    """The judge's record: for each opponent ({name: {task id: answer}}, or a string saying why
    it is not judged), the candidate's win rate and per-prompt verdicts; the calibration on
    labelled pairs when there are any."""
    record: dict[str, Any] = {"against": {}, "verdicts": {}, "calibration": None}
    for name, answers in opponents.items():
        if isinstance(answers, str):
            record["against"][name] = {"not_judged": answers}
            continue
        pairs = [(t["id"], t["prompt"], candidate[t["id"]], answers[t["id"]]) for t in tasks
                 if t["id"] in answers]
        if not pairs:
            record["against"][name] = {"not_judged": "no answers to the same prompts"}
            continue
        judged = judge_pairs(verdicts, template, pairs)
        record["against"][name] = win_rate(judged)
        record["verdicts"][name] = judged
    if calibration:
        record["calibration"] = calibrate(verdicts, template, calibration)
    return record


def judge_inputs(cfg: JudgeConfig, eval_dir: Path) -> tuple[str, list[dict[str, str]] | None]:
    """The judging prompt and the calibration rows (None: no calibration file), read and checked
    before any model is evaluated."""
    template = load_template(Path(cfg.template) if cfg.template else None)
    calibration_file = eval_dir / CALIBRATION_FILE
    return template, read_calibration(calibration_file) if calibration_file.is_file() else None


def run_judge(cfg: JudgeConfig, inputs: tuple[str, list[dict[str, str]] | None],
              trust_remote_code: bool, batch_size: int, tasks: list[dict[str, Any]],
              candidate: str, answers: dict[str, list[str]],
              champion: dict[str, Any] | None) -> dict[str, Any]:
    """The eval stage's judging: the candidate's answers to the task prompts against the base's
    and the champion's (champion.json keeps the answers `pedigree promote` saw), calibrated on
    data/eval/judge_calibration.jsonl when it exists. metrics/judge.json holds the result."""
    template, calibration = inputs
    verdicts = (endpoint_verdicts(cfg) if cfg.endpoint is not None
                else model_verdicts(Path(str(cfg.model)), trust_remote_code, batch_size))

    def by_id(name: str) -> dict[str, str]:
        return {t["id"]: a for t, a in zip(tasks, answers[name], strict=True)}

    opponents: dict[str, dict[str, str] | str] = {"base": by_id("base")}
    if champion is not None:
        opponents["champion"] = champion.get("answers") or (
            "champion.json holds no answers (promoted before the judge existed): promote again "
            "to judge against it")
    record = judge_candidate(verdicts, template, tasks[: cfg.max_items], by_id(candidate),
                             opponents, calibration)
    return {"judge": describe(cfg, template), **record}
