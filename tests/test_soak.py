"""A short soak (`toolace bench soak`, docs/security.md): a real `toolace serve` of the demo model on loopback under
valid, malformed, oversized, slow, stalled, disconnecting and cross-origin clients for half a minute. Asserts the
outcomes, not the time: no 5xx for a valid request, every malformed one a 4xx, every cross-origin one refused
(counted by the server too, so nothing ran), all slots free and the queue empty at the end."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from toolace.cli import main
from toolace.eval.bench_soak import SCENARIOS, bench_soak

pytestmark = pytest.mark.slow  # a 30-second soak of a real server (~40 s): `make test-slow`


def test_short_soak(smollm2_gguf: Path, tmp_path: Path) -> None:
    report = bench_soak(model=str(smollm2_gguf), minutes=0.5, clients=len(SCENARIOS), parallel=2, seed=1,
                        json_out=str(tmp_path / "soak.json"), plot=str(tmp_path / "soak.png"), logs=str(tmp_path))
    c = report["checks"]
    assert set(report["by_scenario"]) == set(SCENARIOS)  # each client opens with its own kind: all ran
    assert c["valid_5xx"] == 0, report["by_scenario"]
    assert c["valid_ok"][0] == c["valid_ok"][1] > 0, report["by_scenario"]
    assert c["bad_4xx"][0] == c["bad_4xx"][1] > 0, report["by_scenario"]
    assert c["cross_origin_403"][0] == c["cross_origin_403"][1] == c["refused_by_server"] > 0
    assert c["slots_free_at_end"] and c["queue_empty_at_end"], report["final"]
    assert len(report["rss_mb"]) > 10 and (tmp_path / "soak.png").stat().st_size > 0
    assert (tmp_path / "soak.json").exists()


def test_soak_refuses_unbounded_runs() -> None:
    runner = CliRunner()
    for args, message in ((["--minutes", "0"], "Error: --minutes must be in (0, 120], got 0.0\n"),
                          (["--minutes", "121"], "Error: --minutes must be in (0, 120], got 121.0\n"),
                          (["--clients", "0"], "Error: --clients must be in [1, 256], got 0\n")):
        result = runner.invoke(main, ["bench", "soak", *args])
        assert (result.exit_code, result.output) == (2, message)
    ok = runner.invoke(main, ["bench", "soak", "--help"])  # near miss: the command itself is there
    assert ok.exit_code == 0 and "--minutes" in ok.output
