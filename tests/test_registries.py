"""One registry per concept: every list of quantization formats and of eval metrics is read from
its registry (pedigree/quant_formats.py, pedigree/eval_metrics.py), none kept beside it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pedigree import eval_metrics, quant_formats
from pedigree.config import GateConfig, QuantizeConfig

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


# ----------------------------------------------------------------------------- formats
def test_the_params_reference_allows_exactly_the_registry_formats():
    """What `pedigree params` tells the user is allowed is what the registry holds."""
    from pedigree import paramdoc

    [formats] = paramdoc.select("quantize.formats")
    assert formats.allowed == f"each: {' | '.join(quant_formats.NAMES)}, not empty"
    [candidate] = paramdoc.select("gate.candidate")
    assert candidate.allowed.split(" | ") == ["merged", *quant_formats.NAMES]


def test_an_unknown_format_is_refused_with_the_registry_names():
    with pytest.raises(ValueError) as err:
        QuantizeConfig(formats=["gguf-q3"])
    assert all(repr(name) in str(err.value) for name in quant_formats.NAMES)
    with pytest.raises(ValueError, match=r"unknown formats \['gguf-q3'\]; known: ") as err:
        QuantizeConfig(max_perplexity_ratio={"gguf-q3": 1.1})
    assert ", ".join(quant_formats.NAMES) in str(err.value)
    with pytest.raises(ValueError, match="candidate"):
        GateConfig(candidate="gguf-q3")
    for name in quant_formats.NAMES:
        QuantizeConfig(formats=[name], max_perplexity_ratio={name: 1.5})
        GateConfig(candidate=name)


def test_the_quantize_check_gates_each_format_at_its_registry_ratio(monkeypatch):
    """A format passes at its registry gate and fails just past it; params.yaml's gate wins."""
    from pedigree.export import quantize

    ratio = {}
    monkeypatch.setattr(quantize, "logits_of", lambda *a: None)
    monkeypatch.setattr(quantize, "greedy_answers", lambda *a: [])
    monkeypatch.setattr(quantize, "distribution_compare",
                        lambda *a: {"perplexity_ratio": ratio["value"]})
    ref = quantize.Reference(None, None, None, [], [])

    def check(fmt: str, value: float, cfg: QuantizeConfig) -> dict:
        ratio["value"] = value
        return quantize.check_format(fmt, None, None, ref, cfg, 1, {"size_bytes": 1})

    for spec in quant_formats.FORMATS.values():
        gate = spec.max_perplexity_ratio
        result = check(spec.name, gate, QuantizeConfig())
        assert result["passed"] and result["max_perplexity_ratio"] == gate, spec.name
        assert not check(spec.name, gate * 1.0001, QuantizeConfig())["passed"], spec.name
        looser = QuantizeConfig(max_perplexity_ratio={spec.name: gate * 2})
        assert check(spec.name, gate * 1.5, looser)["passed"], spec.name
    assert quant_formats.FORMATS["gguf-q8_0"].max_perplexity_ratio == 1.005  # README: Q8_0 1.005


def test_the_export_code_maps_every_registry_writer_and_reader():
    from pedigree.export import hf_quant, kquants, quantize

    assert set(quantize.WRITERS) == set(quant_formats.WRITERS)
    assert set(quantize.READERS) == set(quant_formats.READERS)
    for spec in quant_formats.FORMATS.values():
        assert spec.writer in quant_formats.WRITERS and spec.reader in quant_formats.READERS
        assert spec.description
        if spec.reader in ("gguf", "gguf-lora"):
            assert spec.gguf_type and spec.library is None
        else:
            assert spec.library and spec.gguf_type is None
    for name in quant_formats.read_by("gguf"):  # the file the gguf reader opens
        spec = quant_formats.FORMATS[name]
        assert quantize.gguf_path(Path("q"), name) == Path("q", name, f"model-{spec.gguf_type}.gguf")
    with pytest.raises(hf_quant.HFQuantError) as err:
        hf_quant.quantization_config("gguf-f16")  # written by gguf.py, not transformers
    assert str(err.value).endswith(", ".join(quant_formats.written_by("transformers")))
    assert set(hf_quant._FORMATS) == set(quant_formats.written_by("transformers"))
    assert set(kquants.KQUANTS) == set(quant_formats.written_by("llama.cpp"))


def test_llama_cpp_is_asked_for_each_k_quant_by_its_registry_type(tmp_path, monkeypatch):
    """The `llama-quantize` command line names the registry's GGUF type; llama-cpp-python's
    ftype (when installed) is the one llama.h gives that type."""
    import importlib.util
    import os

    from pedigree.export import kquants

    log = tmp_path / "argv"
    fake = tmp_path / "bin" / "llama-quantize"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\ntouch "$2"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    kquant_formats = quant_formats.written_by("llama.cpp")
    assert kquant_formats
    for name in kquant_formats:
        out = tmp_path / f"{name}.gguf"
        assert kquants.quantize(name, tmp_path / "f16.gguf", out) == "binary" and out.is_file()
    types = [line.split()[-1] for line in log.read_text().splitlines()]
    assert types == [quant_formats.FORMATS[n].gguf_type for n in kquant_formats]
    if importlib.util.find_spec("llama_cpp"):
        import llama_cpp

        for name in kquant_formats:
            gguf_type = quant_formats.FORMATS[name].gguf_type
            assert kquants.KQUANTS[name][1] == getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{gguf_type}")


def test_a_saved_quantization_config_names_its_registry_format():
    from pedigree.export.hf_quant import _saved_format

    saved = {
        "bnb-nf4": {"quant_method": "bitsandbytes", "load_in_4bit": True,
                    "bnb_4bit_quant_type": "nf4"},
        "bnb-int8": {"quant_method": "bitsandbytes", "load_in_8bit": True},
        "torchao-int8": {"quant_method": "torchao",
                         "quant_type": {"default": {"_type": "Int8WeightOnlyConfig"}}},
    }
    assert set(saved) == set(quant_formats.written_by("transformers"))
    for fmt, quant in saved.items():
        assert _saved_format({"quantization_config": quant}) == fmt
    # What each format's own quantization config saves is recognised as that format.
    import importlib.util

    from pedigree.export.hf_quant import quantization_config

    for fmt in saved:
        if importlib.util.find_spec(quant_formats.FORMATS[fmt].library):
            written = quantization_config(fmt).to_dict()
            assert _saved_format({"quantization_config": written}) == fmt, fmt
    assert _saved_format({}) is None
    assert _saved_format({"quantization_config": {"quant_method": "bitsandbytes",
                                                  "load_in_4bit": True,
                                                  "bnb_4bit_quant_type": "fp4"}}) is None


def test_the_readme_names_every_format():
    for name in quant_formats.NAMES:
        assert f"`{name}`" in README, name


# ----------------------------------------------------------------------------- metrics
def test_an_unknown_metric_is_refused_with_the_registry_names():
    for field in ("general_tolerance", "champion_tolerance"):
        with pytest.raises(ValueError, match="unknown metric 'task_acc'") as err:
            GateConfig(**{field: {"task_acc": 0.1}})
        message = str(err.value)
        assert ", ".join(eval_metrics.NAMES) in message
        assert all(f.pattern in message for f in eval_metrics.FAMILIES)
    with pytest.raises(ValueError, match="unknown metric 'task_acc'"):
        GateConfig(task_metric="task_acc")
    for name in (*eval_metrics.NAMES, "task_score.add", "harness.arc.acc"):
        GateConfig(task_metric=name, general_tolerance={name: 0.1},
                   champion_tolerance={name: 0.1})


def test_the_gate_compares_in_the_registry_direction():
    from pedigree.evals.gate import higher_is_better

    for metric in eval_metrics.METRICS.values():
        assert higher_is_better(metric.name) is metric.higher_is_better, metric.name
        # the registry agrees with the naming rule harness metrics fall back on
        assert metric.higher_is_better is not metric.name.endswith(("loss", "perplexity"))
    assert higher_is_better("task_score.add")
    assert not higher_is_better("harness.wiki.word_perplexity")
    assert higher_is_better("harness.arc.acc")
    assert not higher_is_better("harness.arc.ter", {"harness.arc.ter"})
    assert not higher_is_better("task_score", {"task_score"})  # a declaration wins


def test_charts_and_tags_are_the_metrics_the_registry_marks(tmp_path):
    import json

    from pedigree import promote
    from pedigree.evals import outputs
    from pedigree.report import build_report
    from tests.manifests import fake_chain

    marked = {m.name for m in eval_metrics.METRICS.values() if m.dvc_plot}
    values = {name: 0.5 for name in eval_metrics.NAMES}
    plots = outputs.plot_tables({"base": values, "merged": values})
    assert set(plots) == marked
    # The report, built from an eval.json holding every metric, charts the ones marked, only.
    fake_chain(tmp_path)  # as tests/test_report.py: an eval manifest over data/split
    (tmp_path / "metrics").mkdir()
    split = json.loads((tmp_path / "data/split/lineage.json").read_text())
    (tmp_path / "metrics/lineage.json").write_text(json.dumps({
        **split, "stage": "eval", "outputs": [], "upstream": [
            {"path": "data/split", "stage": "split", "outputs_sha256": split["outputs_sha256"]}]}))
    (tmp_path / "metrics/eval.json").write_text(json.dumps({"base": values, "merged": values}))
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())  # where stages write
    page = build_report(tmp_path, tmp_path)
    for metric in eval_metrics.METRICS.values():
        assert (f'id="eval-{metric.name}"' in page) is metric.report_chart, metric.name
    manifest = {"roots": {}, "outputs_sha256": "a" * 64, "params_sha256": "b" * 64, "code": {}}
    tags = promote.lineage_tags({"candidate": "merged", "task_metric": "task_loss"}, manifest,
                                None, values)
    tagged = {k.removeprefix("pedigree.eval.") for k in tags if k.startswith("pedigree.eval.")}
    assert tagged == {m.name for m in eval_metrics.METRICS.values() if m.promotion_tag}


def test_the_readme_describes_every_metric():
    for name in eval_metrics.NAMES:
        assert f"`{name}`" in README, name


# ----------------------------------------------------------------------------- core
def test_config_loads_the_registries_without_the_stage_packages():
    code = ("import sys; import pedigree.config; "
            "heavy = [m for m in sys.modules if m == 'torch' or m.split('.')[:2] in "
            "(['pedigree', 'export'], ['pedigree', 'evals'], ['pedigree', 'train'], "
            "['pedigree', 'data'])]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
