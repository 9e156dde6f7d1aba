"""The audit's MLflow check on its own: which runs vouch for an artifact's roots."""

from __future__ import annotations

from pedigree.audit import check_tracking

REL = "models/cpt"
MANIFEST = {"outputs_sha256": "o" * 64,
            "roots": {"data_sha256": "d" * 64, "base_model": {"sha256": "b" * 64}}}


def _run(run_id: str, base: str, outputs: str = "o" * 64) -> dict[str, str]:
    return {"run_id": run_id, "pedigree.outputs_sha256": outputs, "pedigree.output_path": REL,
            "pedigree.data_sha256": "d" * 64, "pedigree.base_model.sha256": base}


def test_one_agreeing_run_vouches_for_bytes_that_several_runs_made():
    # A stage that is off writes the same bytes over any base: an older run on another base
    # made them too, and the run on this manifest's base is the record.
    runs = [_run("old", "a" * 64), _run("new", "b" * 64)]
    assert check_tracking(REL, MANIFEST, runs) == []


def test_runs_that_all_disagree_are_each_named():
    findings = [str(f) for f in check_tracking(REL, MANIFEST, [_run("old", "a" * 64)])]
    assert findings == [(f"{REL}: MLflow run old is tagged base_model.sha256={'a' * 64}, "
                         f"the manifest says {'b' * 64}")]


def test_no_run_with_these_outputs_is_a_finding():
    findings = [str(f) for f in check_tracking(REL, MANIFEST, [_run("x", "b" * 64, "p" * 64)])]
    assert findings == [f"{REL}: no MLflow run tagged pedigree.outputs_sha256={'o' * 64}"]
