"""Benchmark evaluation through EleutherAI's lm-evaluation-harness (lm-eval, the ``eval`` extra).

- ``lm_eval_model.LLMModulesLM``: an lm-eval model over a checkpoint, a Hugging Face folder or a model in
  memory (scoring in ``lm_eval_scoring``, generation in ``lm_eval_generation``);
- ``runner.evaluate_tasks``: the loop behind ``llm-modules evaluate`` and a fit config's ``evaluate``
  section (``evaluate_at_end``);
- ``prompting``: demonstration design and chain-of-thought for any lm-eval task;
- ``passk`` and ``sandbox``: pass@k, and running model-written programs outside our process.

Importing this package needs nothing beyond llm-modules; the modules that talk to lm-eval import it.
"""
