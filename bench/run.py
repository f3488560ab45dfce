"""`make bench`: the standard set. Runtime benchmark on the tiny Llama-3.1 fixture (128k vocabulary, the grammar
cost that matters for ToolACE-8B) and on SmolLM2; the conversion benchmark. Writes bench/results/*.json and PNGs."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
BFCL = REPO.parent / "shared" / "bfcl"


def main() -> None:
    sys.path.insert(0, str(REPO))
    from tests.helpers.tiny_llama import build_tiny_llama
    from toolace.convert.convert import convert
    from toolace.eval.bench import bench, summary
    from toolace.fixtures import LLAMA3_TOKENIZER, fetch

    RESULTS.mkdir(parents=True, exist_ok=True)
    data = str(BFCL) if BFCL.is_dir() else None
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_tiny_llama(Path(tmp), fetch(LLAMA3_TOKENIZER))
        tiny = Path(tmp) / "tiny-llama-f16.gguf"
        convert(ckpt, tiny, "f16")
        for name, model in (("tiny_llama", str(tiny)), ("smollm2", "demo")):
            report = bench(model=model, data=data, json_out=str(RESULTS / f"{name}.json"),
                           plot=str(RESULTS / f"{name}.png"), runs=5)
            print(f"== {name}\n{summary(report)}\n", flush=True)
    subprocess.run([sys.executable, str(REPO / "bench" / "convert_memory.py")], check=True)


if __name__ == "__main__":
    main()
