"""`pedigree report`: one self-contained HTML file with the lineage graph, tables and charts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pedigree.records import Gate, write_gate
from pedigree.report import bar_chart, build_report, line_chart, lineage_svg
from tests.manifests import fake_chain

REPO = Path(__file__).resolve().parents[1]


def test_report_from_manifests_is_self_contained(tmp_path):
    fake_chain(tmp_path)  # data/curated <- data/split manifests, as the stages write them
    (tmp_path / "metrics").mkdir()
    split = json.loads((tmp_path / "data/split/lineage.json").read_text())
    manifest = {**split, "stage": "eval", "outputs": [], "upstream": [
        {"path": "data/split", "stage": "split", "outputs_sha256": split["outputs_sha256"]}]}
    (tmp_path / "metrics/lineage.json").write_text(json.dumps(manifest))
    (tmp_path / "metrics/eval.json").write_text(json.dumps(
        {"base": {"val_loss": 3.0, "task_score": 0.1}, "sft": {"val_loss": 1.5}}))
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())  # where stages write
    write_gate(Gate(schema_version=1, passed=False, candidate="merged",
                    candidate_sha256="m" * 64, champion=None, task_metric="task_score",
                    checks=[], lower_is_better=[],
                    reasons=["pass: task_loss: +7.5 over the base",
                             "FAIL: general_loss: -3.6 <x>"]), tmp_path / "metrics")
    page = build_report(tmp_path, tmp_path)
    assert '<h3 id="gate">Promotion gate: FAILED (merged)</h3>' in page
    assert "<li>FAIL: general_loss: -3.6 &lt;x&gt;</li>" in page
    graph = re.search(r'<svg id="lineage-graph".*?</svg>', page).group(0)
    assert graph.count("<rect") == 3 and graph.count("<line") == 2  # 3 stages, 2 edges
    for stage in ("eval", "split", "curate"):
        assert f">{stage}</text>" in graph
    assert '<table id="eval-table">' in page and "<td>1.5</td>" in page
    assert 'id="eval-val_loss"' in page and page.count('class="bar"') >= 3
    # Nothing outside the file: no script, stylesheet or image links.
    assert not re.search(r"<script|<link |<img |src=", page)


def test_charts_scale_and_label_their_data():
    chart = line_chart("c", {"train": [(0, 4.0), (10, 2.0)], "validation": [(0, 3.0)]},
                       "step", "loss")
    assert chart.count('class="series"') == 2 and ">train</text>" in chart
    assert line_chart("empty", {}, "x", "y") == '<p id="empty">no data</p>'
    bars = bar_chart("b", {"a": 2.0, "b": 1.0}, "loss")
    widths = [float(w) for w in re.findall(r'class="bar" x="\d+" y="\d+" width="([\d.]+)"', bars)]
    assert widths[0] == 2 * widths[1]


def test_lineage_svg_layers_follow_the_dag():
    chain = [{"path": p, "stage": p, "outputs_sha256": "0" * 64, "upstream": [
        {"path": u} for u in ups]} for p, ups in
        [("c", ["a", "b"]), ("b", ["a"]), ("a", [])]]
    svg = lineage_svg(chain)
    xs = {m.group(2): float(m.group(1)) for m in re.finditer(
        r'<rect x="([\d.]+)" y="[\d.]+" width="\d+" height="\d+" rx="6"/><text x="[\d.]+" '
        r'y="[\d.]+" font-weight="bold">(\w)</text>', svg)}
    assert xs["a"] < xs["b"] < xs["c"]


def test_run_links_never_carry_credentials():
    from pedigree.urls import public_url

    assert public_url("https://bob:s3cret@mlflow.example.com:8443/x") == \
        "https://mlflow.example.com:8443/x"
    assert public_url("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_answers_side_by_side_show_where_the_models_differ(tmp_path):
    from pedigree.report import judge_summary, side_by_side

    rows = [{"id": "a", "prompt": "Add 1 and 1.", "answers": {"base": "2", "prompted-1shot": "2",
                                                              "merged": "2"}},
            {"id": "b", "prompt": "Add 2 and <2>.", "answers": {"base": "five",
                                                                "prompted-1shot": "4",
                                                                "merged": "4"}},
            {"id": "c", "prompt": "Say hi.", "answers": {"base": "hi", "prompted-1shot": "hello",
                                                         "merged": "hey"}}]
    (tmp_path / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = {"a": 1.0, "c": 1.0}
    items = {"base": {"task_score": {**scores, "b": 0.0}},
             "prompted-1shot": {"task_score": {**scores, "b": 1.0}},
             "merged": {"task_score": {**scores, "b": 1.0}}}
    (tmp_path / "items.json").write_text(json.dumps(items))
    judged = {"judge": {"endpoint": "http://127.0.0.1:8080/v1", "model": "j"},
              "against": {"base": {"win_rate": 0.75, "ci95": [0.5, 1.0], "wins": 1, "ties": 1,
                                   "losses": 0, "n": 2},
                          "champion": {"not_judged": "no answers"}},
              "verdicts": {"base": {"b": {"score": 1.0}, "c": {"score": 0.5}}},
              "calibration": {"n": 24, "agreement": 0.5, "kappa": 0.21}}
    (tmp_path / "judge.json").write_text(json.dumps(judged))
    html = side_by_side(tmp_path, "merged", "prompted-1shot")
    # "a" is the same everywhere; "b" (scores differ) comes before "c" (only the answers do).
    assert "Add 1 and 1." not in html
    assert html.index("Add 2 and &lt;2&gt;.") < html.index("Say hi.")
    assert "<th>base</th><th>prompted-1shot</th><th>merged</th>" in html
    assert "judge vs base 1" in html and "2 of the 2 task prompts" in html
    assert "1 of the 2 task prompts" in side_by_side(tmp_path, "merged", None, limit=1)
    (tmp_path / "answers.jsonl").write_text(json.dumps(rows[0]) + "\n")
    assert "every model gave the same answers" in side_by_side(tmp_path, "merged", None)
    summary = judge_summary(judged)
    assert "win rate 0.750 (95 % CI 0.500-1.000; 1 won, 1 tied, 0 lost of 2)" in summary
    assert "over the champion: not judged (no answers)" in summary
    assert "agreement 0.500, Cohen&#x27;s kappa 0.210" in summary
