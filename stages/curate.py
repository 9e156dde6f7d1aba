"""Stage `curate`: raw datasets -> validated, normalised, deduplicated rows in data/curated/.

Run alone:  dvc repro curate      (or: python stages/curate.py)

Every raw row is kept or quarantined in rejects.jsonl with its file, line and reason;
report.json reconciles: input_rows == kept_rows + sum(dropped.values()).
"""

from pathlib import Path

from pedigree.config import load_params
from pedigree.data.curate import check_kept, curate, eval_files, summary, write_curation
from pedigree.data.decontaminate import EvalIndex, eval_items
from pedigree.data.lengths import TokenCounter
from pedigree.data.sources import resolve_sources
from pedigree.data.tools import ToolSupport
from pedigree.lineage import hash_of_hashes, sha256_file
from pedigree.stage import stage_run

params = load_params()
cfg, raw_dir = params.curate, Path(params.data.raw_dir)
sources = resolve_sources(params.data)
# Only the tokenizer of the base is read (the length bounds, and its chat template for rows
# with tool calls): hash those, not the weights. dvc.yaml lists the two files every tokenizer
# has; a separate chat template file only some models have.
tokenizer_files = [f"{cfg.tokenizer}/{name}" for name in ("tokenizer.json", "tokenizer_config.json",
                                                         "chat_template.jinja")
                   if cfg.tokenizer and Path(cfg.tokenizer, name).is_file()]

with stage_run("curate", extra_inputs=tokenizer_files) as run:
    decon = cfg.decontaminate
    index = (EvalIndex(eval_items(eval_files(Path(params.data.eval_dir))), decon.ngram,
                       decon.min_words) if decon.enabled else None)
    counter = TokenCounter(cfg.tokenizer) if cfg.tokenizer else None
    tools = ToolSupport(cfg.tokenizer) if cfg.tokenizer else None
    result = curate(sources, cfg, index, counter, tools,
                    progress=lambda line: print(f"[curate] {line}", flush=True))
    print("[curate] " + summary(result.report()))
    check_kept(result, cfg.min_kept_fraction)  # fails the stage: nothing is published
    report = write_curation(result, run.dir)

    # The data root: one hash over every raw file read (equals `pedigree hash data/raw` when
    # every file there is read).
    files = sorted({p for s in sources for p in s.files})
    run.roots["data_sha256"] = hash_of_hashes(
        {p.relative_to(raw_dir).as_posix(): sha256_file(p) for p in files})
    run.metrics = {"input_rows": report["input_rows"], "kept_rows": report["kept_rows"],
                   **{f"dropped.{reason}": n for reason, n in report["dropped"].items()}}
    run.artifacts = ["report.json"]
