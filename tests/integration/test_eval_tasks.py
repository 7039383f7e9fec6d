"""The bundled tasks (llm_modules.eval_tasks) through lm-eval itself: loaded with TaskManager(include_path=
TASKS_DIR) from another working directory with the network cut, scored end to end by lm-eval's evaluator
with a canned model (pass@k equals the closed form for the known numbers of correct samples, hostile
samples fail), and run on a tiny fitted llm-modules model, 0-shot and 5-shot. Skipped without lm-eval."""

from __future__ import annotations

import math
import socket
from collections import Counter
from pathlib import Path

import pytest


pytest.importorskip("lm_eval")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from llm_modules.eval_tasks import GROUP, TASKS, TASKS_DIR  # noqa: E402

N = 10  # the code task's repeats
# Known numbers of correct samples for the first code problems, and what the others do instead.
CORRECT = [0, 3, 10]
WRONG = ["    return None\n",
         "    import socket\n    return socket.create_connection(('127.0.0.1', 9))\n",
         "    open('/tmp/llm-modules-escape', 'w').write('x')\n",
         "    pass\nimport os\nos.fork()\n",
         "    return [0] * 10 ** 10\n"]


@pytest.fixture(scope="module")
def manager():
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


def no_network(*args, **kwargs):
    raise AssertionError("the bundled tasks must not touch the network")


def test_tasks_load_from_another_directory_without_the_network(manager, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert {GROUP, *TASKS} <= set(manager.all_tasks)
    tasks = manager.load([GROUP])["tasks"]
    assert set(tasks) == set(TASKS)
    for name, task in tasks.items():
        assert len(task.eval_docs) >= 30 and len(list(task.fewshot_docs())) >= 20
        task.set_fewshot_seed(1)
        context = task.fewshot_context(task.eval_docs[0], num_fewshot=5)
        marker = "def " if name == "llm_modules_code" else "Question:"
        assert context.count(marker) == 6, context  # five demonstrations and the question
    code = tasks["llm_modules_code"]
    assert code.config.repeats == N and not getattr(code, "UNSAFE_CODE", False)
    assert "return" in code.fewshot_context(code.eval_docs[0], num_fewshot=1)  # demonstrations show solutions
    cot = manager.load(["llm_modules_answer_cot"])["tasks"]["llm_modules_answer_cot"]
    cot.set_fewshot_seed(1)
    context = cot.fewshot_context(cot.eval_docs[0], num_fewshot=5)
    assert context.count("The answer is") == 5 and context.endswith("Answer:")  # rationales, then the question


class CannedLM(LM):
    """Answers from the documents themselves: right or wrong by plan, never looking at a model."""

    def __init__(self):
        super().__init__()
        self.seen: Counter = Counter()
        self.code_docs: list[str] = []

    @staticmethod
    def right(doc) -> bool:
        return int(doc["id"][-3:]) % 3 != 0

    def loglikelihood(self, requests, disable_tqdm=False):
        out = []
        for req in requests:
            doc, (_, continuation) = req.doc, req.args
            gold = doc["choices"][doc["gold"] if self.right(doc) else (doc["gold"] + 1) % len(doc["choices"])]
            out.append((0.0 if continuation.strip() == gold else -5.0 - len(continuation), False))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm=False):  # abstract in lm-eval; no bundled task asks
        raise AssertionError("no bundled task scores rolling log-likelihoods")

    def generate_until(self, requests, disable_tqdm=False):
        out = []
        for req in requests:
            doc = req.doc
            if "entry_point" not in doc:  # the answer task: plain or chain of thought when right, a shrug when not
                plain = int(doc["id"][-3:]) % 2 == 0
                out.append(" I do not know." if not self.right(doc) else f" {doc['answer']}" if plain else
                           f" {doc['rationale']} The answer is {doc['answer']}.")
                continue
            if doc["id"] not in self.code_docs:
                self.code_docs.append(doc["id"])
            problem, sample = self.code_docs.index(doc["id"]), self.seen[doc["id"]]
            self.seen[doc["id"]] += 1
            body = doc["canonical_solution"] if sample < CORRECT[problem] else WRONG[sample % len(WRONG)]
            out.append(body + "\ndef unrelated():\n    pass\n")  # the until string would have stopped here
        return out


def closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_scores_through_lm_evals_evaluator_equal_the_known_answers(manager):
    escape = Path("/tmp/llm-modules-escape")
    lm = CannedLM()
    out = simple_evaluate(model=lm, tasks=list(TASKS), task_manager=manager, limit=len(CORRECT), num_fewshot=0,
                          log_samples=True, bootstrap_iters=0, gen_kwargs={"until": ["\ndef"]})
    results = out["results"]
    pass1, pass5 = results["llm_modules_code"]["pass@1,programs"], results["llm_modules_code"]["pass@5,programs"]
    assert pass1 == pytest.approx(sum(c / N for c in CORRECT) / len(CORRECT))
    assert pass5 == pytest.approx(sum(closed_form(N, c, 5) for c in CORRECT) / len(CORRECT))
    assert not escape.exists()
    for sample in out["samples"]["llm_modules_code"]:
        assert len(sample["resps"][0]) == N and len(sample["filtered_resps"][0]) == N
    for task, metric in (("llm_modules_choice", "acc,none"), ("llm_modules_answer", "exact_match,extract")):
        docs = [s["doc"] for s in out["samples"][task]]
        assert len(docs) == len(CORRECT)
        assert results[task][metric] == pytest.approx(sum(map(CannedLM.right, docs)) / len(docs))
    # one wrong answer, one plain and one chain-of-thought right answer: the regex reads both
    answers = [s["doc"]["id"] for s in out["samples"]["llm_modules_answer"]]
    assert answers == ["answer-030", "answer-031", "answer-032"]
    assert results["llm_modules_answer"]["exact_match,extract"] == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def tiny_model(quickstart_checkpoint):
    from llm_modules.evaluation.lm_eval_model import LLMModulesLM

    return LLMModulesLM(str(quickstart_checkpoint), batch_size=4)


@pytest.mark.parametrize("shots", [0, 5])
def test_the_three_tasks_run_on_a_tiny_fitted_model(tiny_model, manager, shots):
    limit = 2
    out = simple_evaluate(model=tiny_model, tasks=[GROUP], task_manager=manager, limit=limit, num_fewshot=shots,
                          log_samples=True, bootstrap_iters=0, gen_kwargs={"max_gen_toks": 12})
    results = out["results"]
    expected = {"llm_modules_choice": ["acc,none", "acc_norm,none"],
                "llm_modules_answer": ["exact_match,extract"],
                "llm_modules_code": ["pass@1,programs", "pass@5,programs"]}
    for task, metrics in expected.items():
        assert out["n-samples"][task]["effective"] == limit
        assert len(out["samples"][task]) == limit
        assert out["configs"][task]["num_fewshot"] == shots
        for metric in metrics:
            assert 0.0 <= results[task][metric] <= 1.0
    code_samples = out["samples"]["llm_modules_code"]
    assert all(len(s["resps"][0]) == N for s in code_samples)
    prompt, _ = out["samples"]["llm_modules_answer"][0]["arguments"][0]
    assert prompt.count("Question:") == shots + 1
    code_prompt, _ = code_samples[0]["arguments"][0]
    assert code_prompt.count("def ") == shots + 1 and code_prompt.endswith('"""\n')
