"""One registry per concept: every list of quantization formats and of eval metrics is read from
its registry (pedigree/quant_formats.py, pedigree/eval_metrics.py), none kept beside it."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest

from pedigree import eval_metrics, quant_formats
from pedigree.config import GateConfig, QuantizeConfig

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


# ----------------------------------------------------------------------------- formats
def test_the_config_schema_allows_exactly_the_registry_formats():
    (item,) = typing.get_args(QuantizeConfig.model_fields["formats"].annotation)
    assert typing.get_args(item) == quant_formats.NAMES
    candidates = typing.get_args(GateConfig.model_fields["candidate"].annotation)
    assert candidates == ("merged", *quant_formats.NAMES)


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


def test_the_default_gates_are_the_registry_records():
    from pedigree.export import quantize

    gates = {f.name: f.max_perplexity_ratio for f in quant_formats.FORMATS.values()}
    assert quant_formats.DEFAULT_PERPLEXITY_GATES == gates
    assert quantize.DEFAULT_PERPLEXITY_GATES is quant_formats.DEFAULT_PERPLEXITY_GATES
    assert gates["gguf-q8_0"] == 1.005  # README: "Q8_0 <= 1.005 by default"


def test_the_export_code_maps_every_registry_writer_and_reader():
    from pedigree.export import hf_quant, kquants, quantize

    assert set(quantize.WRITERS) == set(quant_formats.WRITERS)
    assert set(quantize.READERS) == set(quant_formats.READERS)
    for spec in quant_formats.FORMATS.values():
        assert spec.writer in quant_formats.WRITERS and spec.reader in quant_formats.READERS
        assert spec.description
        if spec.reader == "gguf":
            assert spec.gguf_type and spec.library is None
        else:
            assert spec.library and spec.gguf_type is None
    assert tuple(quantize.GGUF_QTYPES) == quant_formats.read_by("gguf")
    assert tuple(kquants.KQUANTS) == quant_formats.written_by("llama.cpp")
    assert hf_quant.FORMATS == quant_formats.written_by("transformers")
    assert set(hf_quant._FORMATS) == set(hf_quant.FORMATS)


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


def test_charts_and_tags_are_the_metrics_the_registry_marks():
    from pedigree import promote, report
    from pedigree.evals import outputs

    marked = {m.name for m in eval_metrics.METRICS.values() if m.dvc_plot}
    assert set(outputs.PLOTTED) == marked
    values = {name: 0.5 for name in eval_metrics.NAMES}
    plots = outputs.plot_tables({"base": values, "merged": values})
    assert set(plots) == marked
    assert report.REPORT_CHARTS == tuple(
        m.name for m in eval_metrics.METRICS.values() if m.report_chart)
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
