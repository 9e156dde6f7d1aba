"""GGUF K-quants (Q4_K_M, Q5_K_M, Q6_K) through llama.cpp's own quantizer.

The `gguf` package cannot write K-quants, and their mixtures (which tensors get which type) are
llama.cpp's to define, so an F16 file written by export/gguf.py is handed to llama.cpp: the
`llama-quantize` binary when it is on PATH, else `llama_model_quantize` from llama-cpp-python
(`pip install 'pedigree[kquants]'`, which builds llama.cpp: ~7 minutes on 2 cores).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

from pedigree.errors import PedigreeError
from pedigree.quant_formats import FORMATS, written_by

# llama.cpp's llama_ftype value of each K-quant file type (enum llama_ftype in llama.h)
LLAMA_FTYPES = {"Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}

# The formats the registry has llama.cpp write: format -> (llama-quantize type name, llama_ftype)
KQUANTS = {fmt: (FORMATS[fmt].gguf_type, LLAMA_FTYPES[FORMATS[fmt].gguf_type])
           for fmt in written_by("llama.cpp")}


class KQuantError(PedigreeError, RuntimeError):
    """No llama.cpp quantizer available, or it failed."""


def quantizer() -> str:
    """Which quantizer is available: "binary", "python", or a KQuantError saying how to get one."""
    if shutil.which("llama-quantize"):
        return "binary"
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise KQuantError(
            "GGUF K-quants need llama.cpp's quantizer: put `llama-quantize` on PATH or "
            "pip install 'pedigree[kquants]' (llama-cpp-python, builds llama.cpp, ~7 min); "
            f"{', '.join(written_by('gguf'))} need neither"
        ) from None
    return "python"


def quantize(fmt: str, f16: Path, out: Path) -> str:
    """Quantize an F16 GGUF file to `fmt`; returns the quantizer used."""
    name, ftype = KQUANTS[fmt]
    how = quantizer()
    if how == "binary":
        proc = subprocess.run(["llama-quantize", str(f16), str(out), name], capture_output=True,
                              text=True, check=False)
        if proc.returncode:
            raise KQuantError(f"llama-quantize {name} failed: {proc.stderr.strip()[-800:]}")
        return how
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(),
                                      ctypes.byref(params)) != 0:
        raise KQuantError(f"llama_model_quantize {name} failed for {f16}")
    return how
