"""policy.json and gate.json: typed records, written and read through pedigree.records only."""

from __future__ import annotations

import json

import pytest

from pedigree import records
from pedigree.config import GateConfig
from pedigree.errors import MissingInputError, PedigreeError
from pedigree.evals.gate import decide

POLICY = records.Policy(schema_version=records.POLICY_VERSION, sft_method="qlora",
                        quant={"quant_type": "nf4", "double_quant": True}, weights=None,
                        adapters=["models/sft", "models/align"], align="dpo")


def test_policy_round_trips_and_is_checked_on_write(tmp_path):
    records.write_policy(POLICY, tmp_path)
    assert records.read_policy(tmp_path) == POLICY
    with pytest.raises(PedigreeError, match=r"policy.json: not a valid policy record \(adapters"):
        records.write_policy({**POLICY, "adapters": "models/sft"}, tmp_path)


@pytest.mark.parametrize(("change", "field"), [
    ({"schema_version": 1}, "schema_version"),  # an older pipeline's record
    ({"align": True}, "align"),  # strict: no coercion of a hand edit
    ({"extra": 1}, "extra"),
])
def test_a_bad_policy_names_the_file_and_field(tmp_path, change, field):
    (tmp_path / "policy.json").write_text(json.dumps({**POLICY, **change}))
    with pytest.raises(PedigreeError, match=rf"{tmp_path}/policy.json: .*\({field}:"):
        records.read_policy(tmp_path)


def test_missing_or_broken_records_are_user_errors(tmp_path):
    with pytest.raises(MissingInputError, match="gate.json: not found; .* run `dvc repro`"):
        records.read_gate(tmp_path)
    (tmp_path / "gate.json").write_text("{")
    with pytest.raises(PedigreeError, match="gate.json: not valid JSON"):
        records.read_gate(tmp_path)


def test_the_gate_writes_a_valid_record(tmp_path):
    items = {m: {"task_score": {"a": 1.0, "b": 0.0}, "general_loss": {"g": 3.0}}
             for m in ("base", "merged")}
    items["merged"]["task_score"] = {"a": 1.0, "b": 1.0}
    gate = decide(GateConfig(), items, None, "c" * 64)
    records.write_gate(gate, tmp_path)
    back = records.read_gate(tmp_path)
    assert back == gate and back["schema_version"] == 1 and back["champion"] is None

