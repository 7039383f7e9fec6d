"""Benchmark evaluation through EleutherAI's lm-evaluation-harness (issue 23, groundwork).

``lm_eval_model.LLMModulesLM`` is an lm-eval ``LM`` over an llm-modules checkpoint or a Hugging Face
folder. Importing this package needs nothing beyond llm-modules; ``lm_eval_model`` needs ``lm-eval``.
"""
