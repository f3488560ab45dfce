"""HF checkpoint (local folder or hub repo id) -> GGUF, streamed one row-chunk at a time, written atomically.

Float outputs (F32/F16/BF16) are written directly. Any other output type is a llama.cpp quantization: the checkpoint
is first written as a lossless 16-bit GGUF (BF16 for BF16 checkpoints, else F16) beside the output, quantized, and the
intermediate removed, so the only file that ever appears at the output path is the finished one."""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from tqdm import tqdm

from toolace.errors import InputError, ModelFileError
from toolace.limits import CONVERT_CHUNK_BYTES, MAX_MODEL_CARD_BYTES
from toolace.paths import WRITE_FAILURES, atomic_output, output_error

from .checkpoint import Checkpoint, open_checkpoint, read_json
from .llama import LlamaParams, TensorPlan, llama_params, permute_rows, plan_tensors, write_hparams
from .partials import PART_SUFFIX, writing
from .tokenizer import read_tokenizer

log = logging.getLogger(__name__)

Q = gguf.GGMLQuantizationType
FLOAT_TYPES = {"f32": (Q.F32, gguf.LlamaFileType.ALL_F32), "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
               "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16)}
F16_OVERFLOW = 65520.0  # smallest magnitude that rounds to infinity in F16 (max finite is 65504)
_NP_OUT = {Q.F32: np.dtype("<f4"), Q.F16: np.dtype("<f2"), Q.BF16: np.dtype("<u2")}


def _bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    # one pass: the ufunc widens while shifting (astype then shift would be two passes and a temporary)
    return np.left_shift(bits, np.uint32(16), dtype=np.uint32).view(np.float32)


def _f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even to BF16, keeping NaNs NaN (a plain shift could turn a NaN payload into infinity)."""
    bits = x.astype(np.float32, copy=False).view(np.uint32)
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


@functools.cache
def _bf16_to_f16_table() -> np.ndarray:
    """F16 of every BF16 bit pattern: BF16 -> F16 becomes one table lookup per element (4x faster than through F32)."""
    with np.errstate(over="ignore"):
        return _bf16_bits_to_f32(np.arange(65536, dtype=np.uint16)).astype(np.float16)


def _check_f16_range(f32: np.ndarray, name: str) -> None:
    """Refuse finite values that would overflow to infinity in F16 (infinities already in the source are kept)."""
    finite = f32[np.isfinite(f32)]
    peak = float(np.max(np.abs(finite), initial=0.0))
    if peak >= F16_OVERFLOW:
        raise InputError(f"tensor {name}: value {peak:g} overflows F16; convert with --outtype bf16 or f32")


def convert_block(raw: np.ndarray, src_dtype: str, out_type: gguf.GGMLQuantizationType, name: str) -> np.ndarray:
    """Convert a block of a source tensor (BF16 as uint16 bits) to the output type's numpy representation."""
    if src_dtype == "BF16" and out_type == Q.BF16:
        return raw  # bit-exact copy
    if src_dtype == "BF16" and out_type == Q.F16:
        # fast path on the bits: every |value| below 2^16 (BF16 0x4780) fits F16, and there is no inf/NaN either
        if np.bitwise_and(raw, 0x7FFF).max(initial=0) >= 0x4780:
            _check_f16_range(_bf16_bits_to_f32(raw), name)
        return _bf16_to_f16_table()[raw]
    f32 = _bf16_bits_to_f32(raw) if src_dtype == "BF16" else raw.astype(np.float32, copy=False)
    if out_type == Q.F32:
        return f32
    if out_type == Q.BF16:
        return _f32_to_bf16_bits(f32)
    if float(np.max(np.abs(f32), initial=0.0)) >= F16_OVERFLOW:  # also true for inf/NaN: then look closer
        _check_f16_range(f32, name)
    with np.errstate(over="ignore"):  # only source infinities/NaNs remain here
        return f32.astype(np.float16)


def _blocks(ckpt: Checkpoint, plan: TensorPlan) -> Iterator[np.ndarray]:
    """The tensor's converted data in row blocks of about CONVERT_CHUNK_BYTES (F32), whole heads for Q/K."""
    if plan.data is not None:
        yield plan.data.astype(_NP_OUT[plan.out_type]) if plan.out_type != Q.F32 else plan.data
        return
    assert plan.src is not None  # invariant of TensorPlan, not input validation
    ref = ckpt.tensors[plan.src]
    rows = ref.shape[0]
    row_bytes = max(1, int(np.prod(ref.shape[1:], dtype=np.int64)) * 4)
    step = max(1, CONVERT_CHUNK_BYTES // row_bytes)
    if plan.permute_heads:
        head_rows = rows // plan.permute_heads
        step = max(head_rows, step // head_rows * head_rows)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        block = ckpt.read_rows(plan.src, start, stop)
        if plan.permute_heads:
            block = permute_rows(block, (stop - start) // (rows // plan.permute_heads))
        yield convert_block(block, ref.dtype, plan.out_type, plan.src)


def _nbytes(plan: TensorPlan) -> int:
    return int(np.prod(plan.shape, dtype=np.int64)) * _NP_OUT[plan.out_type].itemsize


def _general_metadata(writer: gguf.GGUFWriter, ckpt: Checkpoint, model_id: str | None) -> None:
    """general.* keys via gguf's own model-card/config heuristics (the ones llama.cpp's converter uses), fed from
    files we have already size-checked; a model card too large or unreadable only loses the card's extras."""
    hf_params = dict(ckpt.config)
    if model_id:  # a hub id names the model better than the snapshot folder (a commit hash) does
        hf_params["_name_or_path"] = model_id
    card: dict[str, Any] = {}
    readme = ckpt.root / "README.md"
    if readme.is_file() and readme.stat().st_size <= MAX_MODEL_CARD_BYTES:
        try:
            card = gguf.Metadata.load_model_card(ckpt.root)
        except Exception as e:  # yaml errors of every kind; the card is optional decoration
            log.warning("README.md: model card front matter unreadable (%s); converting without it", e)
    total, shared, expert, n_expert = writer.get_total_parameter_count()
    try:
        meta = gguf.Metadata.apply_metadata_heuristic(gguf.Metadata(), card, hf_params, ckpt.root, total)
    except Exception as e:  # odd card values (a number where a name belongs) must not stop a conversion
        log.warning("model card metadata unusable (%s); using the folder name", e)
        meta = gguf.Metadata.apply_metadata_heuristic(gguf.Metadata(), {}, {}, ckpt.root, total)
    gen_path = ckpt.root / "generation_config.json"
    gen = read_json(gen_path) if gen_path.is_file() else {}
    for gen_key, attr in (("temperature", "sampling_temp"), ("top_p", "sampling_top_p"), ("top_k", "sampling_top_k"),
                          ("min_p", "sampling_min_p")):
        value = gen.get(gen_key) if isinstance(gen, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # as llama.cpp's converter copies them
            setattr(meta, attr, int(value) if attr == "sampling_top_k" else float(value))
    if meta.name is None:
        meta.name = ckpt.root.name
    if meta.size_label is None and total > 0:
        meta.size_label = gguf.size_label(total, shared, expert, n_expert)
    writer.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(writer)


def write_gguf(ckpt: Checkpoint, out_path: Path, outtype: str, model_id: str | None = None) -> None:
    """Write `ckpt` as a float GGUF (f32/f16/bf16) to `out_path` (not atomically; callers wrap this)."""
    weight_type, file_type = FLOAT_TYPES[outtype]
    params: LlamaParams = llama_params(ckpt.config)
    plans = plan_tensors(ckpt, params, weight_type)
    tokenizer = read_tokenizer(ckpt.root, ckpt.config, params.vocab_size)

    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    for plan in plans:
        writer.add_tensor_info(plan.gguf_name, plan.shape, _NP_OUT[plan.out_type], _nbytes(plan),
                               raw_dtype=plan.out_type)
    _general_metadata(writer, ckpt, model_id)
    write_hparams(writer, params)
    writer.add_file_type(file_type)
    tokenizer.write(writer)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    total = sum(_nbytes(p) for p in plans)
    writer.write_header_to_file(path=out_path)
    try:
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        assert writer.fout is not None  # set by write_header_to_file
        fout = writer.fout[0]
        align = writer.data_alignment
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"convert {outtype}", disable=None) as bar:
            for plan in plans:
                fout.write(b"\0" * (-fout.tell() % align))
                written = 0
                for block in _blocks(ckpt, plan):
                    fout.write(memoryview(np.ascontiguousarray(block)).cast("B"))
                    written += block.nbytes
                    bar.update(block.nbytes)
                if written != _nbytes(plan):  # the header already promised this size
                    raise ModelFileError(f"tensor {plan.src}: wrote {written} bytes, expected {_nbytes(plan)}")
            fout.write(b"\0" * (-fout.tell() % align))
        fout.flush()
        os.fsync(fout.fileno())  # the rename that follows must not publish a file whose data is still in flight
    finally:
        writer.close()


def _normalise_outtype(outtype: str) -> str:
    from .quantize import quant_type  # late: quantize pulls in llama.cpp, which float conversion never needs

    if not isinstance(outtype, str) or not outtype:
        raise InputError("outtype must be a type name such as f16, bf16, f32, Q8_0 or Q4_K_M")
    if outtype.lower() in FLOAT_TYPES:
        return outtype.lower()
    qt = quant_type(outtype)
    if qt.needs_imatrix:  # found out now, not after the conversion
        raise InputError(f"{qt.name} needs an importance matrix: convert to f16/bf16, then `toolace quantize` "
                         "with --imatrix")
    return qt.name


def resolve_source(src: str | os.PathLike[str], revision: str | None = None) -> tuple[Path, str | None]:
    """A local checkpoint folder, or a hub repo id downloaded (safetensors/json/tokenizer files only)."""
    local = Path(src)
    if local.is_dir():
        if revision is not None:
            raise InputError("--revision applies to hub repo ids, not to a local folder")
        return local, None
    from .hub import download  # late: huggingface_hub is only needed for a hub repo id

    repo_id = str(src)
    return download(repo_id, revision=revision), repo_id


def convert(src: str | os.PathLike[str], outfile: str | os.PathLike[str], outtype: str = "f16",
            revision: str | None = None) -> Path:
    """Convert a Llama checkpoint (folder or hub repo id) to GGUF at `outfile`; returns the path written.

    `outtype` is f32, f16, bf16, or a llama.cpp quantization name (Q4_K_M, Q8_0, IQ4_XS, ...). Types that need an
    importance matrix are refused here; convert to f16/bf16 and run `quantize` with one."""
    kind = _normalise_outtype(outtype)
    out = Path(outfile)
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give the output file name")
    root, model_id = resolve_source(src, revision)
    ckpt = open_checkpoint(root)
    if kind in FLOAT_TYPES:
        with atomic_output(out) as tmp:
            write_gguf(ckpt, tmp, kind, model_id)
        return out

    from .quantize import quantize

    srcs = {ref.dtype for ref in ckpt.tensors.values()}
    # The intermediate holds every source value exactly, so quantization rounds once: BF16 for BF16 checkpoints,
    # F32 where any tensor is F32 (F16 would round first), else F16.
    inter = "bf16" if srcs == {"BF16"} else "f32" if "F32" in srcs else "f16"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=f".{inter}{PART_SUFFIX}", dir=out.parent)
    except OSError as e:
        raise output_error(out, f"cannot write: {e.strerror or e}") from None
    os.close(fd)
    tmp16 = Path(name)
    try:
        with writing(tmp16):  # locked while written: `toolace rm --partials` sweeps it only once nobody is
            write_gguf(ckpt, tmp16, inter, model_id)
            quantize(tmp16, out, type=kind)
    except OSError as e:  # the intermediate hit a full disk: the same one line as the float path
        if e.errno in WRITE_FAILURES:
            raise output_error(out, f"cannot write: {e.strerror or e}") from None
        raise
    finally:
        tmp16.unlink(missing_ok=True)
    return out
