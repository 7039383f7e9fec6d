"""llm_modules.evaluation.runner's small pieces: which results become logged metrics and under what names,
and the few-shot/limit checks (the rest is exercised end to end in tests/integration/test_evaluate_cmd.py)."""

from __future__ import annotations

import pytest

from llm_modules.evaluation import runner
from llm_modules.registry import ConfigError


def test_task_metrics_name_every_number_by_task_metric_and_filter():
    results = {"results": {
        "mc": {"alias": "mc", "acc,none": 0.5, "acc_stderr,none": 0.25, "sample_len": 4},
        "gsm": {"alias": "gsm", "exact_match,strict-match": 0.0, "exact_match_stderr,strict-match": "N/A",
                "exact_match,flexible-extract": 1.0},
    }}
    assert runner.task_metrics(results) == {
        "mc/acc": 0.5, "mc/acc_stderr": 0.25,
        "gsm/exact_match_strict-match": 0.0, "gsm/exact_match_flexible-extract": 1.0,
    }


@pytest.mark.parametrize("k, limit, field", [(-1, None, "--num_fewshot -1"), (1.5, None, "--num_fewshot 1.5"),
                                             (True, None, "--num_fewshot True"), (None, 0, "--limit 0"),
                                             (None, -0.5, "--limit -0.5")])
def test_counts_are_checked(k, limit, field):
    with pytest.raises(ConfigError, match=field.replace("-", r"\-").replace(".", r"\.")):
        runner.check_counts(k, limit)


def test_valid_counts_pass():
    for k, limit in ((None, None), (0, 1), (5, 0.25), (3, 100)):
        runner.check_counts(k, limit)
