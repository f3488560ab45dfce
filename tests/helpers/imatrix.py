"""Importance matrices for tests, measured the way llama.cpp's `llama-imatrix` does (sum of squared activations
entering each matrix multiplication, per input column, with the token count), but with transformers' forward pass
on the HF checkpoint, and written by the package's writers (convert/imatrix_file.py) in either format."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from toolace.convert.imatrix_file import ImatrixEntry
from toolace.convert.imatrix_file import write_imatrix_dat as _write_dat
from toolace.convert.imatrix_file import write_imatrix_gguf as _write_gguf

CALIBRATION = (
    "The weather in Paris is mild in spring. def add(a, b):\n    return a + b\n"
    "Function calls: [get_weather(city='Tokyo', unit='celsius')] 東京の天気は晴れです。 1234567890 🙂\n"
) * 4


def measure_imatrix(checkpoint: Path) -> tuple[dict[str, np.ndarray], int]:
    """{gguf tensor name: per-column sum of squared inputs} and the number of tokens they were summed over."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    sums: dict[str, np.ndarray] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            gguf_name = tmap.get_name(name + ".weight", try_suffixes=(".weight",))
            if gguf_name is None:
                raise RuntimeError(f"no GGUF name for {name}")

            def hook(_mod: torch.nn.Module, args: tuple, _out: object, key: str = gguf_name) -> None:
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                sums[key] = sums.get(key, 0) + (x * x).sum(0).numpy()

            hooks.append(module.register_forward_hook(hook))
    ids = tok(CALIBRATION, return_tensors="pt").input_ids
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return {k: v.astype(np.float32) for k, v in sums.items()}, int(ids.shape[1])


def _entries(sums: dict[str, np.ndarray], n_tokens: int) -> dict[str, ImatrixEntry]:
    return {k: ImatrixEntry(v, n_tokens) for k, v in sums.items()}


def write_imatrix_gguf(path: Path, sums: dict[str, np.ndarray], n_tokens: int) -> Path:
    """llama.cpp's GGUF imatrix layout, through the package's own writer."""
    return _write_gguf(path, _entries(sums, n_tokens), ["toolace-test-calibration"], n_tokens)


def write_imatrix_dat(path: Path, sums: dict[str, np.ndarray], n_tokens: int) -> Path:
    """llama.cpp's legacy `.dat` layout, through the package's own writer."""
    return _write_dat(path, _entries(sums, n_tokens))
