"""Which adapter is active at each step, for Switch and W-Switch, in both timings.

``timing="exact"``: the schedule as written (entry i is used at step i).
``timing="reference"``: the released code's timing, where the switch happens in a step-end callback, so the
entry chosen after step i takes effect at step i+1 (step 0 uses entry 0).
"""

from __future__ import annotations

TIMINGS = ("reference", "exact")


def switch_schedule(num_adapters: int, steps: int, interval: int, timing: str) -> list[int]:
    """Index of the active adapter per step, rotating in set order every ``interval`` steps."""
    _check(timing, interval)
    if timing == "exact":
        return [(step // interval) % num_adapters for step in range(steps)]
    # released code: after step i (i > 0, i % interval == 0) the next adapter becomes active for step i+1,
    # so adapter 0 runs steps 0..interval (interval + 1 steps), then each next one runs `interval` steps
    return [0 if step == 0 else ((step - 1) // interval) % num_adapters for step in range(steps)]


def weighted_blocks(weights: list[float], interval: int) -> list[int]:
    """Block length per adapter: max(1, round(w_k / max_j w_j * interval)) (Python's round, as released)."""
    largest = max(weights)
    return [max(1, round(weight / largest * interval)) for weight in weights]


def w_switch_schedule(weights: list[float], steps: int, interval: int, reserved_steps: int,
                      reserved_adapter: int, timing: str) -> list[int]:
    """Blocks laid out cyclically in set order until ``steps`` entries, last ``reserved_steps`` entries
    overwritten with the character adapter; then shifted by one step under the reference timing."""
    _check(timing, interval)
    blocks = weighted_blocks(weights, interval)
    cycle = [index for index, length in enumerate(blocks) for _ in range(length)]
    schedule = [cycle[step % len(cycle)] for step in range(steps)]
    for step in range(max(0, steps - reserved_steps), steps):
        schedule[step] = reserved_adapter
    if timing == "exact":
        return schedule
    # schedule[i] is applied at the end of step i: step k >= 1 runs schedule[k-1] (so only
    # reserved_steps - 1 of the reserved steps take effect), step 0 runs schedule[0]
    return [schedule[0]] + schedule[:-1]


def _check(timing: str, interval: int) -> None:
    if timing not in TIMINGS:
        raise ValueError(f"timing must be one of {TIMINGS}, got {timing!r}")
    if interval < 1:
        raise ValueError(f"switch interval must be >= 1, got {interval}")
