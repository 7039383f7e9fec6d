"""Peak tensor memory of a piece of work on the CPU, as the memory estimator predicts it.

``torch.profiler`` with ``profile_memory=True`` records every allocation the CPU allocator makes
while it is active, with the allocator's running total of live bytes. The largest total, less what
was live when profiling began, is the peak of tensor memory (weights, gradients, optimizer state,
activations, temporaries): free of the interpreter's and the libraries' own memory, which the
resident set size would add, and of what glibc keeps of freed blocks. The benchmarks and the
estimator's tests measure with this one function so their figures compare.
"""

from __future__ import annotations

from typing import Callable


def cpu_peak_allocated(fn: Callable[[], object]) -> int:
    """Most live CPU tensor bytes while ``fn`` runs, above what was live before (0 if it allocates none).

    Run it in a fresh process where exactness matters: memory freed during ``fn`` that was allocated
    before it (a cache an earlier call left) lowers the running total below the starting point.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.typed[0] == _EventType.Allocation and event.typed[1].device.type == "cpu":
            events.append((event.start_time_ns, event.typed[1]))
        stack.extend(event.children)
    if not events:
        return 0
    events.sort(key=lambda e: e[0])
    start = events[0][1].total_allocated - events[0][1].alloc_size  # live before fn's first allocation
    return max(e.total_allocated for _, e in events) - start
