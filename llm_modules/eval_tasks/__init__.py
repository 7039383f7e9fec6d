"""Three small lm-eval tasks of our own, made from data written for this project (generate_data.py):

- ``llm_modules_choice``: multiple choice scored by log-likelihood (acc, acc_norm);
- ``llm_modules_answer``: short generated answers, exact match after a regex extracts the answer (so a
  chain-of-thought output "... The answer is 19." scores too); the demonstrations carry a ``rationale``;
- ``llm_modules_code``: Python functions from a docstring prompt, scored by pass@k with the unbiased
  estimator; generated programs run only in llm_modules.evaluation.sandbox.

All three form the group ``llm_modules``. ``TASKS_DIR`` is the folder to hand lm-eval::

    from lm_eval.tasks import TaskManager
    TaskManager(include_path=str(TASKS_DIR))

The data is read from the installed package, wherever the process runs, with no network. Importing this
package needs nothing beyond llm-modules; the tasks' helpers (utils.py) are loaded by lm-eval itself.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
GROUP = "llm_modules"
TASKS = ("llm_modules_choice", "llm_modules_answer", "llm_modules_code")

__all__ = ["GROUP", "TASKS", "TASKS_DIR"]
