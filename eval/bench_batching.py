"""What batching can gain on this machine, measured on a Batcher's own context for `toolace bench serve`
(docs/parallel.md): the ceiling (one decode of N sampled tokens against N decodes of one) and the step shapes (one
step of four sequences' mixed submissions against each sequence alone), per batching mode."""

from __future__ import annotations

import time
from typing import Any

from toolace.api import ToolACE
from toolace.limits import BATCHING_MODES

LEVELS = (1, 2, 4, 8)


def fill(batcher: Any, tokens: list[int], slots: slice = slice(None)) -> None:
    """Decode `tokens` as the prompt of each of the batcher's slots (in `slots`), one sequence at a time."""
    from toolace.runtime.batch import _Pending

    for s in batcher.slots[slots]:
        batcher._decode([_Pending(s, tokens)])
        s.tokens += tokens


def batching_ceiling(ta: ToolACE, levels: tuple[int, ...] = LEVELS, steps: int = 16) -> dict[str, float]:
    """Throughput of one llama_decode carrying N tokens (one per sequence) over N one-token decodes, same model:
    what batching can gain on this machine at most."""
    from toolace.runtime.batch import Batcher, _Pending

    batcher = Batcher(ta.model, max(levels))
    try:
        fill(batcher, list(range(1, 33)))  # a short prompt in every sequence

        def timed(n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(steps):
                batcher._decode([_Pending(s, [7]) for s in batcher.slots[:n]])
                for s in batcher.slots[:n]:
                    s.tokens.append(7)
            return (time.perf_counter() - t0) / steps

        times = {n: timed(n) for n in sorted({1, *levels})}
        return {str(n): round(n * times[1] / times[n], 3) for n in levels}
    finally:
        batcher.close()


# One step's submissions from four sequences (tokens each): sampled tokens, forced runs, a prompt chunk beside
# sampled tokens, four prompt chunks. What each batching mode gains on them says where it pays (docs/parallel.md).
STEP_SHAPES = {"1,1,1,1": (1, 1, 1, 1), "1,3,7,1": (1, 3, 7, 1), "1,1,5,9": (1, 1, 5, 9),
               "64,1,1,1": (64, 1, 1, 1), "17,33,1,1": (17, 33, 1, 1), "64,64,64,64": (64, 64, 64, 64)}
SHAPE_CONTEXT = 200  # tokens each sequence holds when a shape is timed (a BFCL prompt's order of magnitude)


def _time_groups(batcher: Any, groups: list[list[int]], lens: tuple[int, ...], reps: int) -> float:
    """Seconds to decode `groups` of the batcher's sequences one after another (sequence i submits lens[i] tokens),
    `reps` times, each time from the same SHAPE_CONTEXT tokens."""
    from toolace.runtime.batch import _Pending

    t0 = time.perf_counter()
    for _ in range(reps):
        for g in groups:
            batcher._decode([_Pending(batcher.slots[i], [7] * lens[i]) for i in g])
        for s in batcher.slots:  # back to the context the shape is timed at
            batcher._truncate(s, SHAPE_CONTEXT)
    return time.perf_counter() - t0


def step_shapes(ta: ToolACE, reps: int = 8) -> dict[str, dict[str, float]]:
    """Per batching mode and step shape: the four sequences' submissions decoded as one step over the same decoded
    one sequence at a time (each alone), throughput ratio; >1: the step batched."""
    from toolace.runtime.batch import Batcher

    out: dict[str, dict[str, float]] = {}
    for mode in BATCHING_MODES:
        batcher = Batcher(ta.model, 4, mode)
        try:
            fill(batcher, list(range(100, 100 + SHAPE_CONTEXT)))
            out[mode] = {name: round(_time_groups(batcher, [[0], [1], [2], [3]], lens, reps)
                                     / _time_groups(batcher, [[0, 1, 2, 3]], lens, reps), 3)
                         for name, lens in STEP_SHAPES.items()}
        finally:
            batcher.close()
    return out


