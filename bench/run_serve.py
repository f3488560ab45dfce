"""`make bench-serve`: `toolace bench serve` on SmolLM2 (the demo GGUF) and on the tiny Llama-3.1 fixture (built
here, F16), each against llama-server from the same llama.cpp source; a vLLM column for SmolLM2 when its export
folder is given. Writes bench/results/serve_{smollm2,tiny_llama}.{json,png}.

    python bench/run_serve.py LLAMA_SERVER [--vllm-export DIR] [--vllm-args ARGS]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
BFCL = REPO.parent / "shared" / "bfcl"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("llama_server")
    parser.add_argument("--vllm-export", default=None)
    parser.add_argument("--vllm-args", default="")
    parser.add_argument("--only", choices=("smollm2", "tiny_llama"), default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tests.helpers.tiny_llama import build_tiny_llama
    from toolace.convert.convert import convert
    from toolace.eval.bench_serve import bench_serve
    from toolace.eval.bench_serve_report import summary
    from toolace.fixtures import LLAMA3_TOKENIZER, fetch

    RESULTS.mkdir(parents=True, exist_ok=True)
    data = str(BFCL) if BFCL.is_dir() else None
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        if args.only in (None, "smollm2"):
            runs.append(("smollm2", "demo", {"vllm_export": args.vllm_export, "vllm_args": args.vllm_args}))
        if args.only in (None, "tiny_llama"):
            tiny = Path(tmp) / "tiny-llama-f16.gguf"
            convert(build_tiny_llama(Path(tmp), fetch(LLAMA3_TOKENIZER)), tiny, "f16")
            runs.append(("tiny_llama", str(tiny), {}))
        for name, model, extra in runs:
            report = bench_serve(model=model, data=data, llama_server=args.llama_server, logs=tmp,
                                 json_out=str(RESULTS / f"serve_{name}.json"),
                                 plot=str(RESULTS / f"serve_{name}.png"), **extra)
            print(f"== {name}\n{summary(report)}\n", flush=True)


if __name__ == "__main__":
    main()
