"""Peak tensor memory of a piece of work on the CPU, as the memory estimator predicts it.

``torch.profiler`` with ``profile_memory=True`` records every allocation the CPU allocator makes
while it is active and every free, with their addresses. Replaying them, the most bytes that the work
allocated and held at once is the peak of tensor memory (weights, gradients, optimizer state,
activations, temporaries): free of the interpreter's and the libraries' own memory, which the
resident set size would add, and of what glibc keeps of freed blocks. The benchmarks and the
estimator's tests measure with this one function so their figures compare.
"""

from __future__ import annotations

from typing import Callable


def cpu_peak_allocated(fn: Callable[[], object]) -> int:
    """Most CPU tensor bytes that ``fn`` itself allocated and held at once (0 if it allocates none).

    Only blocks allocated while ``fn`` runs are counted, by address: memory that was live before (an
    earlier run's model waiting in a reference cycle, a cache) and is freed during ``fn`` does not lower
    the figure, whenever the garbage collector happens to run. A collection before profiling also keeps
    such leftovers from being freed in the middle of ``fn``'s work.
    """
    import gc

    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.typed[0] == _EventType.Allocation and event.typed[1].device.type == "cpu":
            events.append((event.start_time_ns, event.typed[1]))
        stack.extend(event.children)
    events.sort(key=lambda e: e[0])
    held: dict[int, int] = {}  # address -> size of each block fn allocated and has not freed yet
    live = peak = 0
    for _, allocation in events:
        if allocation.alloc_size > 0:
            held[allocation.ptr] = allocation.alloc_size
            live += allocation.alloc_size
            peak = max(peak, live)
        else:
            live -= held.pop(allocation.ptr, 0)  # a block from before fn: not fn's memory
    return peak
