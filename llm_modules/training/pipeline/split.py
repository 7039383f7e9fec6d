"""Where a single-stack LM is cut: which models can be, into which runs of blocks, and which of
those stages each pipeline rank holds.

A model of ``n`` blocks becomes ``S = pp x virtual`` stages, each a run of consecutive blocks; stage
0 also owns what comes before the first block (token embedding, embedding norm, embedded positions),
stage ``S - 1`` the final norm and the head. With ``virtual`` > 1 a rank holds several stages, in
loops: rank ``r`` the stages ``r, r + pp, r + 2 pp, ...`` (interleaved 1F1B, interleaved zero bubble).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from llm_modules.nn.lm import DecoderLM, EncoderLM
from llm_modules.registry import ConfigError


def numel(module: nn.Module | None) -> int:
    """Parameters of ``module`` (0 for None)."""
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def check_pipelinable(lm: nn.Module, stages: int) -> None:
    """Refuse, with the reason, a model that cannot be cut into ``stages`` pieces."""
    if stages < 1:
        raise ConfigError(f"pipeline_parallel_size must be at least 1, got {stages}")
    if type(lm) not in (DecoderLM, EncoderLM):
        raise ConfigError(
            f"pipeline parallelism splits single-stack LMs (CausalLM, PrefixLM, MaskedLM), not a "
            f"{type(lm).__name__}: an encoder-decoder's decoder reads the encoder's output in every block, so "
            "its stages would not form one chain; use pipeline_parallel_size: 1 (and FSDP or tensor parallelism)"
        )
    if stages == 1:
        return
    n_layers = len(lm.stack.layers)
    if stages > n_layers:
        raise ConfigError(
            f"{stages} pipeline stages (pipeline_parallel_size x virtual_stages) are more than the model's "
            f"{n_layers} blocks: each stage needs at least one; lower pipeline_parallel_size or virtual_stages"
        )
    if lm.config.tie_embeddings:
        raise ConfigError(
            "model.config.tie_embeddings: the head would share its weight with the embedding on another pipeline "
            "stage, and keeping the two copies equal is not built; set tie_embeddings: false or "
            "pipeline_parallel_size: 1"
        )
    if any(hasattr(m, "aux_loss") for m in lm.modules()):  # a component with its own loss (nn.lm.aux_loss)
        raise ConfigError(
            "model.config.activation: an MoE layer's auxiliary (load-balancing) loss arises on every pipeline "
            "stage, and only the last stage's loss is back-propagated; use a dense activation or "
            "pipeline_parallel_size: 1"
        )
    position = lm.stack.position
    if numel(position) and not (position.embeds and not position.rotates_qk and not position.adds_score_bias):
        raise ConfigError(
            f"model.config.position: {type(position).__name__} has parameters that every block reads, which "
            "pipeline stages cannot share; use position rope, alibi or learned, or pipeline_parallel_size: 1"
        )


def split_blocks(
    lm: DecoderLM | EncoderLM, stages: int, blocks: Sequence[int] | None = None, balance: str = "params",
    seq_len: int | None = None,
) -> list[range]:
    """Each stage's blocks (consecutive ranges covering the stack in order).

    ``blocks``: how many blocks each stage gets. By default the split that makes the largest stage
    as small as it can be, each stage at least one block, costed by ``balance``:
    ``params``: parameters (memory; the first stage counts the embedding, the last the final norm
    and head); ``flops``: training FLOPs per token at ``seq_len`` (time; PaLM's 6N + 12·H·Q·T per
    block, the head's matmul on the last stage, the embedding lookup free).
    """
    check_pipelinable(lm, stages)
    n_layers = len(lm.stack.layers)
    if blocks is not None:
        blocks = [int(b) for b in blocks]
        if len(blocks) != stages or sum(blocks) != n_layers or min(blocks) < 1:
            raise ConfigError(
                f"pipeline blocks {blocks} must list {stages} counts (one per stage), each at least 1, adding up "
                f"to the model's {n_layers} blocks"
            )
        return ranges(blocks)
    if balance == "flops":
        from llm_modules.training.model_flops import matmul_parameters

        config = lm.config
        attention = 12 * config.n_heads * config.dim_per_head * (seq_len or config.max_seq_len)
        cost = [6 * matmul_parameters(layer) + attention for layer in lm.stack.layers]
        first, last = 0, 6 * matmul_parameters(lm.head)
    elif balance == "params":
        cost = [numel(layer) for layer in lm.stack.layers]
        first = numel(lm.embed) + numel(lm.stack.embedding_norm) + numel(lm.stack.position)
        last = numel(lm.stack.final_norm) + numel(lm.head)
    else:
        raise ConfigError(f"pipeline balance {balance!r} is not one of params, flops")
    return ranges(balanced_counts(cost, stages, first, last))


def balanced_counts(cost: Sequence[float], stages: int, first: float = 0, last: float = 0) -> list[int]:
    """Block counts per stage that minimize the largest stage's cost, where block ``i`` costs
    ``cost[i]`` and the first and last stage carry ``first`` and ``last`` more (dynamic programming
    over the cut points). The estimator calls it with analytic counts, the stages with real ones."""
    n = len(cost)
    if not 1 <= stages <= n:
        raise ConfigError(f"{stages} pipeline stages cannot each hold at least one of {n} blocks")
    prefix = [0.0]
    for c in cost:
        prefix.append(prefix[-1] + c)

    def stage_cost(s: int, a: int, b: int) -> float:  # stage s holding blocks a..b-1
        return prefix[b] - prefix[a] + (first if s == 0 else 0) + (last if s == stages - 1 else 0)

    # best[s][b]: the smallest largest cost of stages 0..s holding blocks 0..b-1, and where stage s starts
    best = [[(float("inf"), 0)] * (n + 1) for _ in range(stages)]
    for b in range(1, n + 1):
        best[0][b] = (stage_cost(0, 0, b), 0)
    for s in range(1, stages):
        for b in range(s + 1, n + 1):
            best[s][b] = min((max(best[s - 1][a][0], stage_cost(s, a, b)), a) for a in range(s, b))
    counts, b = [], n
    for s in range(stages - 1, -1, -1):
        a = best[s][b][1]
        counts.append(b - a)
        b = a
    return counts[::-1]


def ranges(counts: Sequence[int]) -> list[range]:
    """Consecutive ranges of the given lengths, starting at 0."""
    starts = [sum(counts[:i]) for i in range(len(counts))]
    return [range(start, start + count) for start, count in zip(starts, counts)]


def stage_ids(rank: int, pp: int, virtual: int = 1) -> list[int]:
    """The stages pipeline rank ``rank`` of ``pp`` holds, in the order its schedule lists them."""
    if not 0 <= rank < pp:
        raise ValueError(f"pipeline rank {rank} is outside 0..{pp - 1}")
    return [rank + k * pp for k in range(virtual)]
