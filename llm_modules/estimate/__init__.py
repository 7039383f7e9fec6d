"""Plan a run before paying for it: parameters, FLOPs, memory per device, scaling laws, wall time.

Each module answers one question from a ``ModelConfig`` and a few numbers about the run, without
training or allocating the model: ``params`` (counts, from the model built on the meta device),
``flops`` (per token and per run), ``activations`` (measured by ``trace``: the real modules run
on data-less CPU tensors, ``meta_cpu``; ``cuda`` says what a GPU keeps differently) and
``memory`` (bytes per device under a precision and a parallel strategy), ``scaling`` (Chinchilla
and Kaplan laws),
``walltime`` (hours at an MFU on a named GPU); ``report`` puts them together for
``llm-modules estimate``. Pipelined runs (``--pp``): ``pipeline`` (memory per pipeline rank,
the bubble, the step time), ``schedule_order`` (what each schedule runs, in order, from torch's
own schedules), ``layout`` (the best data x pipeline x tensor layout for a cluster).
"""

from llm_modules.estimate.activations import Training, estimate_activations
from llm_modules.estimate.flops import estimate_flops
from llm_modules.estimate.memory import Setup, estimate_memory, model_states
from llm_modules.estimate.params import count
from llm_modules.estimate.report import plan

__all__ = ["Setup", "Training", "count", "estimate_activations", "estimate_flops", "estimate_memory", "model_states",
           "plan"]
