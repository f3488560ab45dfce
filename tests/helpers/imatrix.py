"""Importance matrices for tests, measured the way llama.cpp's `llama-imatrix` does (sum of squared activations
entering each matrix multiplication, per input column, with the token count), but with transformers' forward pass
on the HF checkpoint, and written in llama.cpp's GGUF imatrix format or its legacy `.dat` format."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np

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


def write_imatrix_gguf(path: Path, sums: dict[str, np.ndarray], n_tokens: int) -> Path:
    """llama.cpp's GGUF imatrix layout: `<tensor>.in_sum2` [n_cols x 1] and `<tensor>.counts` [1 x 1]."""
    writer = gguf.GGUFWriter(path, arch="imatrix")
    writer.add_type("imatrix")
    writer.add_uint32("imatrix.chunk_count", 1)
    writer.add_uint32("imatrix.chunk_size", n_tokens)
    writer.add_array("imatrix.datasets", ["toolace-test-calibration"])
    for name, values in sums.items():
        writer.add_tensor(name + ".in_sum2", values.reshape(1, -1))
        writer.add_tensor(name + ".counts", np.array([[float(n_tokens)]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_imatrix_dat(path: Path, sums: dict[str, np.ndarray], n_tokens: int) -> Path:
    """The legacy binary layout: entry count, then per entry name, ncall, nval, values (mean x ncall)."""
    out = bytearray(struct.pack("<i", len(sums)))
    for name, values in sums.items():
        raw = name.encode()
        mean = values / n_tokens
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", 1, values.size)
        out += mean.astype("<f4").tobytes()
    out += struct.pack("<i", 1)
    path.write_bytes(bytes(out))
    return path
