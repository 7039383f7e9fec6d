"""``DesignSampler``: an lm-eval ``ContextSampler`` that chooses demonstrations by a ``PromptDesign``.

lm-eval hands its sampler the evaluated document only when the few-shot split is the test split
(``ConfigurableTask.fewshot_context``); nearest-neighbour selection needs it always, so ``apply.py``
wraps the task's ``fewshot_context`` to set ``current`` before lm-eval samples. The evaluated
document itself (and any pool copy equal to it) is never a demonstration.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from lm_eval.api.samplers import ContextSampler

from llm_modules.evaluation.prompting import selection
from llm_modules.evaluation.prompting.design import PromptDesign
from llm_modules.registry import ConfigError


class DesignSampler(ContextSampler):
    """Selects and orders ``n`` demonstrations from ``pool`` for the document being evaluated."""

    def __init__(self, pool: list[dict], design: PromptDesign, text_of: Callable[[dict], str],
                 pool_text_of: Callable[[dict], str], embed=None, task_name: str = "the task"):
        super().__init__(pool, rnd=design.seed)
        self.pool = list(pool)
        self.design, self.text_of, self.pool_text_of = design, text_of, pool_text_of
        self.embed, self.task_name = embed, task_name
        self.current: dict | None = None
        self._similarity = None

    def set_rnd(self, rnd):
        """lm-eval's ``--fewshot_random_seed`` reseeds samplers; the design's ``seed`` governs here."""
        return self

    def fewshot_docs(self):
        return list(self.pool)

    def similarity(self):
        if self._similarity is None:
            texts = [self.pool_text_of(d) for d in self.pool]
            if self.design.similarity_measure == "embedding":
                self._similarity = selection.EmbeddingSimilarity(texts, self.embed)
            else:
                self._similarity = selection.BM25Similarity(texts)
        return self._similarity

    def sample(self, n: int, eval_doc=None, df=None, **kwargs) -> list[dict]:
        if n <= 0:
            return []
        doc = eval_doc if eval_doc is not None else self.current
        candidates = [i for i, d in enumerate(self.pool) if doc is None or d != doc]
        if n > len(candidates):
            raise ConfigError(f"num_fewshot: {n} demonstrations asked, but the few-shot pool of {self.task_name} "
                              f"holds {len(candidates)} besides the evaluated document; "
                              f"use --num_fewshot {len(candidates)} or fewer")
        text = self.text_of(doc) if doc is not None else ""
        # each document's draws depend on the seed and the document alone (str seeds hash stably)
        rng = random.Random(f"{self.design.seed}:{text}")
        design = self.design
        relevance = self.similarity().query(text, candidates) if design.needs_similarity else {}
        if design.strategy == "random":
            chosen = selection.drawn(candidates, n, rng)
        elif design.strategy == "mmr":
            chosen = selection.mmr(relevance, self.similarity().between, n, design.lam)
        else:
            chosen = selection.nearest(relevance, n)
        if design.ordering == "similar-last":
            chosen = selection.similar_last(chosen, relevance)
        else:
            chosen = selection.shuffled(chosen, rng)
        return [self.pool[i] for i in chosen]
