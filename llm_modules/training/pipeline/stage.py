"""A pipeline stage: the part of a single-stack LM that one stage runs, cut from the model in place.

A rank first prunes its copy of the model to what its stages hold (``prune``): the other stages'
blocks become parameter-free placeholders, so the remaining ones keep their numbers and the
model's parameter names stay the checkpoint's (``stack.layers.3.attn...``). Each ``LMStage`` then
registers only its own modules, under those same names, so that a rank holding several stages
(interleaved schedules) owns every parameter exactly once and each stage can be sharded (FSDP2)
and differentiated on its own; it runs its blocks through the pruned stack, which it keeps
unregistered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from llm_modules.empty_init import assign, parameters_on_meta
from llm_modules.nn.lm import DecoderLM, EncoderLM, embedded
from llm_modules.nn.mask_inputs import MaskInputs, self_attention_mask
from llm_modules.nn.positions import NoPosition
from llm_modules.training.pipeline.split import numel, split_blocks


def stage_list(stages) -> list:
    """A rank's stages as a list: the pipeline functions take one stage or several."""
    return list(stages) if isinstance(stages, (list, tuple)) else [stages]


class LMStage(nn.Module):
    """Stage ``index`` of a pruned ``DecoderLM`` or ``EncoderLM``: token ids (first stage) or hidden
    states (B, T, D) in, hidden states or, on the last stage, logits (B, T, V) out.

    Between stages only hidden states travel; every stage is also given the batch's
    ``attention_mask``, ``prefix_lengths`` and ``document_ids`` (the schedule cuts them into the same
    micro-batches) and rebuilds the self-attention mask and positions from them
    (``nn.mask_inputs.self_attention_mask``), so a stage is a pure function of its inputs.
    """

    def __init__(self, lm: DecoderLM | EncoderLM, index: int, blocks: Sequence[range]):
        super().__init__()
        self.config, self.causal = lm.config, lm.causal
        self.index, self.num_stages, self.blocks = index, len(blocks), blocks[index]
        self.is_first, self.is_last = index == 0, index == len(blocks) - 1
        whole = lm.stack
        own = nn.Module()  # the stack's parts this stage owns, under the stack's attribute names
        own.layers = nn.ModuleDict({str(i): whole.layers[i] for i in self.blocks})
        if self.is_first:
            for name in ("embedding_norm", "position"):
                if numel(getattr(whole, name)):
                    setattr(own, name, getattr(whole, name))
        if self.is_last:
            own.final_norm = whole.final_norm
        self.stack = own
        self.embed = lm.embed if self.is_first else None
        self.head = lm.head if self.is_last else None
        self.__dict__["whole_stack"] = whole  # unregistered: it also holds the rank's other stages' blocks

    def forward(
        self, x: torch.Tensor, attention_mask=None, prefix_lengths=None, token_type_ids=None, document_ids=None,
    ) -> torch.Tensor:
        """``attention_mask`` (1 = real token), ``prefix_lengths`` and ``document_ids`` (packed
        documents) as the whole model takes them; ``token_type_ids`` are read by the first stage only."""
        stack = self.whole_stack
        if self.is_first:
            x = embedded(self.embed, x, None, token_type_ids)
        inputs = MaskInputs(self.causal, attention_mask, prefix_lengths, document_ids=document_ids)
        mask, positions = self_attention_mask(self.config, inputs, x)
        if self.is_first:
            x = stack.enter(x, positions)
        x = stack.run_blocks(x, mask, positions, self.blocks)
        return self.head(stack.final_norm(x)) if self.is_last else x


def prune(lm: DecoderLM | EncoderLM, blocks: Sequence[range], held: Sequence[int]) -> None:
    """Take out of ``lm``, in place, what the stages ``held`` (indices into ``blocks``) do not hold:
    other stages' blocks (parameter-free placeholders keep the numbering), the embedding side
    unless stage 0 is held, the final norm and head unless the last stage is."""
    stack, kept = lm.stack, {i for s in held for i in blocks[s]}
    for i in range(len(stack.layers)):
        if i not in kept:
            stack.layers[i] = nn.Identity()
    if 0 not in held:
        lm.embed = None
        stack.embedding_norm = None
        if numel(stack.position):  # embed-only (check_pipelinable): the first stage adds it
            stand_in = NoPosition()
            stand_in.max_len = stack.position.max_len  # sequence-length checks stay on every stage
            stack.position = stand_in
    if len(blocks) - 1 not in held:
        stack.final_norm = nn.Identity()
        lm.head = None


def build_stages(
    lm: DecoderLM | EncoderLM, held: Sequence[int], stages: int, blocks: Sequence[int] | None = None,
    balance: str = "params", seq_len: int | None = None,
) -> list[LMStage]:
    """The stages ``held`` (of ``stages``) cut from ``lm``, which is pruned to them in place (build
    the model once per rank); the split as ``split_blocks`` makes it."""
    if any(not 0 <= s < stages for s in held):
        raise ValueError(f"stage indices {list(held)} are outside 0..{stages - 1}")
    runs = split_blocks(lm, stages, blocks, balance, seq_len)
    prune(lm, runs, held)
    return [LMStage(lm, s, runs) for s in held]


def build_stage(lm: DecoderLM | EncoderLM, index: int, pp: int, blocks: Sequence[int] | None = None) -> LMStage:
    """Stage ``index`` of ``pp``, one per rank (``build_stages`` with a single stage)."""
    return build_stages(lm, [index], pp, blocks)[0]


def stage_from_state(
    make_model: Callable[[], DecoderLM | EncoderLM], index: int, pp: int, state: Mapping[str, torch.Tensor],
    blocks: Sequence[int] | None = None, where: str = "the checkpoint",
) -> LMStage:
    """Stage ``index`` of ``pp`` holding only its own weights: ``make_model`` builds the model with
    its parameters on the meta device (no memory, no init work, ``empty_init``), the stage is cut
    from it, and given its own tensors from ``state`` (the whole model's state dict, such as
    ``gather_state_dict`` makes; a mapping that reads tensors on demand keeps the others unread).
    A tensor missing from ``state`` is a ConfigError naming ``where``."""
    with parameters_on_meta():
        lm = make_model()
    stage = build_stage(lm, index, pp, blocks)
    wanted = stage.state_dict().keys()
    assign(stage, {name: state[name] for name in wanted if name in state}, where)
    return stage
