"""Parameter counts of a ModelConfig, from the real model built on the meta device.

The model of the config's kind is built with meta tensors (shapes only: no memory, no init cost),
so the count is exact by construction for every component, a plugin's included: nothing here knows
a component by name. The split is read off the module tree: the blocks are the ``layers`` of the
stacks the model lists in ``stack_names`` (decoder last), the lookup tables are ``nn.Embedding``
modules and the position encodings' parameters, the linear weights are ``nn.Linear`` weights.

"Embedding" parameters are the lookup tables: token (and token-type) embeddings, learned
absolute positions and T5 relative-position buckets. A tied LM head *is* the token table, so it
is embedding; an untied head is a projection and counts as non-embedding. Kaplan et al. (2020)
fit their laws to non-embedding parameters; Hoffmann et al. (2022) to all parameters.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from llm_modules.kinds import CLASS_NAMES as KINDS  # LM kinds: short name -> LightningModule class
from llm_modules.kinds import KINDS as LM_KINDS
from llm_modules.registry import ConfigError


@dataclass(frozen=True)
class ParameterCount:
    """Distinct parameters (a tied head counts once), split by where they sit.

    ``block`` / ``encoder_block``: one decoder (or only) block and one encoder block (0 when the
    kind has none): the units FSDP and ZeRO-3 gather one at a time. ``outside_blocks``: everything
    else (embeddings, head, final and embedding norms), FSDP's root unit.
    """

    total: int
    embedding: int
    block: int
    n_blocks: int
    encoder_block: int = 0
    n_encoder_blocks: int = 0
    #: weights of linear layers (a tied head's table included): what autocast casts to half precision
    linear_weights: int = 0
    #: elements of the largest parameter tensor (the CPU AdamW loop's temporaries are its size)
    largest_tensor: int = 0
    method: str = "meta"

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding

    @property
    def outside_blocks(self) -> int:
        return self.total - self.block * self.n_blocks - self.encoder_block * self.n_encoder_blocks

    def as_dict(self) -> dict:
        return {**asdict(self), "non_embedding": self.non_embedding, "outside_blocks": self.outside_blocks}


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ConfigError(f"unknown model kind {kind!r}; kinds: {', '.join(KINDS)}")
    return kind


# ---- the real model, on the meta device -------------------------------------------------------------------


def build_model(cfg, kind: str = "causal"):
    """The torch model (``nn.lm``) of this kind, on the current default device."""
    return LM_KINDS[check_kind(kind)].build_torch_model(cfg)


def build_meta(cfg, kind: str = "causal"):
    """The torch model of this kind with meta tensors: real shapes, no memory, no initialization cost.

    An attention backend that declares it cannot run here (a CUDA-only kernel plugin) is replaced by
    sdpa (``estimate.cuda.as_sdpa``): backends hold no parameters.
    """
    import torch

    from llm_modules.estimate.cuda import as_sdpa
    from llm_modules.estimate.meta_cpu import refs_without_compiler
    from llm_modules.estimate.trace import skip_init

    with refs_without_compiler(), skip_init(), torch.device("meta"):
        return build_model(as_sdpa(cfg)[0], kind)


_MODELS: dict = {}


def model_key(cfg, kind: str) -> tuple:
    """A key for what is computed once per model: the config's fields (plain values, so their
    ``repr`` tells configs apart), the kind, and what each component name builds (a plugin or a
    test may register another under a freed name); cheap, since a layout search asks it often."""
    from llm_modules.registry import MODEL_REGISTRIES

    components = tuple((slot, tuple((e.name, id(e.factory)) for e in registry.entries()))
                       for slot, registry in MODEL_REGISTRIES.items())
    return type(cfg).__qualname__, repr(vars(cfg)), kind, components


def meta_model(cfg, kind: str = "causal"):
    """``build_meta(cfg, kind)``, built once per config and kind and shared: one plan asks for the
    model several times (the count, LoRA's targets, the pipeline's split), and a layout search
    hundreds of times. Callers read it and must not change it."""
    key = model_key(cfg, kind)
    if key not in _MODELS:
        if len(_MODELS) >= 8:
            _MODELS.clear()
        _MODELS[key] = build_meta(cfg, kind)
    return _MODELS[key]


def stacks(model) -> tuple:
    """(decoder or only stack, encoder stack or None), by the model's ``stack_names``."""
    found = model.stacks()
    return found[-1], (found[0] if len(found) > 1 else None)


def count(cfg, kind: str = "causal") -> ParameterCount:
    """Parameters of the model built on the meta device, split as ``ParameterCount`` says."""
    from torch import nn

    from llm_modules.nn.lm import count_parameters

    model = meta_model(cfg, kind)
    distinct = {id(p): p for p in model.parameters()}
    # Lookup tables: embeddings (a tied head's table among them) and the position encodings' tables.
    lookup = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    lookup |= {id(p) for position in model.position_encodings() for p in position.parameters()}
    decoder, encoder = stacks(model)

    def first_block(stack) -> int:
        return count_parameters(stack.layers[0]) if len(stack.layers) else 0

    linear = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)}
    return ParameterCount(
        total=count_parameters(model), embedding=sum(distinct[key].numel() for key in lookup & distinct.keys()),
        linear_weights=sum(linear.values()), largest_tensor=max((p.numel() for p in distinct.values()), default=0),
        block=first_block(decoder), n_blocks=len(decoder.layers),
        encoder_block=first_block(encoder) if encoder is not None else 0,
        n_encoder_blocks=len(encoder.layers) if encoder is not None else 0,
    )


# ---- which kind a preset is for ---------------------------------------------------------------------------


_USE_WITH = re.compile(r"Use with (\w+)")


def kind_of_class(class_path: str) -> str | None:
    """``llm_modules.Seq2SeqLM`` -> ``seq2seq``; None for a class that is not one of the four kinds."""
    name = str(class_path).rsplit(".", 1)[-1]
    return {cls: kind for kind, cls in KINDS.items()}.get(name)


def preset_kind(text: str) -> str:
    """The kind a preset's header comment names (``# ... Use with Seq2SeqLM.``); causal if none."""
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        match = _USE_WITH.search(line)
        if match and kind_of_class(match.group(1)):
            return kind_of_class(match.group(1))
    return "causal"
