"""Suite-wide settings.

Test models are tiny, so one intra-op thread is faster than two, and it avoids OpenMP's spin-wait
collapse when another process shares the two cores (observed: 2 s vs 110 s for one tiny fit).
Subprocesses the tests start inherit the variable.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
