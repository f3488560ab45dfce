"""Evaluation and benchmarks, built on the public API: BFCL data and AST checking (`bfcl`, `ast_checker`), the
`toolace eval` verb (`evaluate`), the runtime benchmark (`bench`) and the conversion benchmark (`bench_convert`)."""
