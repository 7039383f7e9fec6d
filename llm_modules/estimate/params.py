"""Parameter counts of a ModelConfig, by closed formula, with the embedding / non-embedding split.

The formula mirrors how ``nn/`` builds each LM kind (``nn/lm.py``), component by component, so it
builds nothing and answers for a 175B-parameter config instantly; ``tests/test_estimate.py``
checks it against ``count_parameters`` of the real model (built on the meta device) for every
shipped preset and kind. A component the formula does not know (a plugin's norm or feed-forward)
makes ``count`` build the model on the meta device instead (exact, shapes only, no memory), so
plugins still get an answer.

"Embedding" parameters are the lookup tables: token (and token-type) embeddings, learned
absolute positions and T5 relative-position buckets. A tied LM head *is* the token table, so it
is embedding; an untied head is a projection and counts as non-embedding. Kaplan et al. (2020)
fit their laws to non-embedding parameters; Hoffmann et al. (2022) to all parameters.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from llm_modules.kinds import CLASS_NAMES as KINDS  # LM kinds: short name -> LightningModule class
from llm_modules.registry import ConfigError, split_spec


class UnknownComponent(Exception):
    """The formula does not know this component (a plugin's): count on the meta device instead."""


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
    method: str = "formula"

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


# ---- the formula ------------------------------------------------------------------------------------------


def norm_parameters(cfg) -> int:
    name, options = split_spec(cfg.norm, "norm")
    if name == "layernorm":
        return cfg.d_model * (2 if options.get("bias", True) else 1)
    if name == "rmsnorm":
        return cfg.d_model
    if name == "scalenorm":
        return 1
    raise UnknownComponent(f"norm {name!r}")


def feedforward_parameters(cfg, spec=None, weights_only: bool = False) -> int:
    """One feed-forward block (``nn/feedforward.py``, ``nn/moe.py``); ``weights_only``: its
    linear layers' weight matrices alone."""
    from llm_modules.nn.feedforward import default_hidden

    name, options = split_spec(cfg.activation if spec is None else spec, "activation")
    d, bias = cfg.d_model, cfg.bias
    if name == "moe":
        experts = options.get("n_experts", 8)
        return d * experts + experts * feedforward_parameters(cfg, options.get("expert", "swiglu"), weights_only)
    plain = {"relu", "gelu", "swish", "silu"}
    gated = {"glu", "bilinear", "reglu", "geglu", "swiglu"}
    if name not in plain | gated:
        raise UnknownComponent(f"activation {name!r}")
    is_gated = name in gated
    hidden = cfg.d_ff or default_hidden(d, is_gated)
    matrices = 3 if is_gated else 2
    biases = (2 * hidden + d if is_gated else hidden + d) if bias and not weights_only else 0
    return matrices * d * hidden + biases


def attention_parameters(cfg, weights_only: bool = False) -> int:
    q = cfg.n_heads * cfg.dim_per_head
    kv = cfg.kv_heads * cfg.dim_per_head
    weights = cfg.d_model * (q + 2 * kv) + q * cfg.d_model
    return weights + ((q + 2 * kv + cfg.d_model) if cfg.bias and not weights_only else 0)


def residual_norms(cfg, n_sublayers: int) -> tuple[int, bool]:
    """(norms per block, whether the stack ends with a final norm), per ``nn/residual.py``."""
    name, options = split_spec(cfg.residual, "residual")
    if name in ("pre", "post", "deepnorm"):
        return n_sublayers, name == "pre"
    if name == "sandwich":
        return 2 * n_sublayers, True
    if name == "parallel":
        return (1 if options.get("shared_norm", True) else n_sublayers), True
    raise UnknownComponent(f"residual {name!r}")


def block_parameters(cfg, cross: bool) -> int:
    norms, _ = residual_norms(cfg, 3 if cross else 2)
    attention = attention_parameters(cfg) * (2 if cross else 1)
    return attention + feedforward_parameters(cfg) + norms * norm_parameters(cfg)


def position_tables(cfg) -> int:
    """Learned parameters of one stack's position encoding (all are lookup tables)."""
    name, options = split_spec(cfg.position, "position")
    if name == "learned":
        return cfg.max_seq_len * cfg.d_model
    if name == "t5":
        return options.get("num_buckets", 32) * cfg.n_heads
    if name in ("rope", "alibi", "sinusoidal", "none"):
        return 0
    raise UnknownComponent(f"position {name!r}")


def stack_extras(cfg, cross: bool) -> int:
    """A stack's norms outside its blocks: the embedding norm and the final norm."""
    _, final = residual_norms(cfg, 3 if cross else 2)
    return (int(cfg.embedding_norm) + int(final)) * norm_parameters(cfg)


def formula_count(cfg, kind: str = "causal") -> ParameterCount:
    """Parameters by formula; raises UnknownComponent for a component it does not know."""
    check_kind(kind)
    d, vocab = cfg.d_model, cfg.vocab_size
    tables = vocab * d + cfg.type_vocab_size * d
    seq2seq = kind == "seq2seq"
    # (blocks, with cross-attention): an encoder-decoder's decoder cross-attends, its encoder does not
    stacks = [(cfg.n_layers, True), (cfg.encoder_layers, False)] if seq2seq else [(cfg.n_layers, False)]
    blocks = sum(n * block_parameters(cfg, cross) for n, cross in stacks)
    extras = sum(stack_extras(cfg, cross) for _, cross in stacks)
    positions = position_tables(cfg) * len(stacks)
    head = 0 if cfg.tie_embeddings else vocab * d
    head += vocab if cfg.lm_head_bias else 0
    if cfg.head_transform and not seq2seq:  # nn.Linear(d, d) with bias, GELU, a norm (BERT)
        head += d * d + d + norm_parameters(cfg)
    total = tables + positions + blocks + extras + head
    linear = sum(
        n * (attention_parameters(cfg, True) * (2 if cross else 1) + feedforward_parameters(cfg, None, True))
        for n, cross in stacks
    )
    linear += vocab * d + (d * d if cfg.head_transform and not seq2seq else 0)
    return ParameterCount(
        total=total, embedding=tables + positions, linear_weights=linear,
        block=block_parameters(cfg, cross=seq2seq), n_blocks=cfg.n_layers,
        encoder_block=block_parameters(cfg, cross=False) if seq2seq else 0,
        n_encoder_blocks=cfg.encoder_layers if seq2seq else 0,
    )


# ---- the real model, on the meta device -------------------------------------------------------------------


def build_meta(cfg, kind: str = "causal"):
    """The torch model of this kind with meta tensors: real shapes, no memory, no initialization cost."""
    import torch

    from llm_modules.nn.lm import DecoderLM, EncoderDecoderLM, EncoderLM

    check_kind(kind)
    with torch.device("meta"):
        if kind == "seq2seq":
            return EncoderDecoderLM(cfg)
        if kind == "masked":
            return EncoderLM(cfg)
        return DecoderLM(cfg, prefix=kind == "prefix")


def meta_count(cfg, kind: str = "causal") -> ParameterCount:
    """Parameters of the model built on the meta device, split the same way as ``formula_count``."""
    from torch import nn

    from llm_modules.nn.lm import count_parameters
    from llm_modules.nn.positions import PositionEncoding

    model = build_meta(cfg, kind)
    distinct = {id(p): p for p in model.parameters()}
    heads = {id(m.proj.weight) for m in model.modules() if type(m).__name__ == "LMHead"}
    # Lookup tables: embeddings outside an LM head, and the position encodings' tables.
    lookup = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    lookup |= {id(p) for m in model.modules() if isinstance(m, PositionEncoding) for p in m.parameters()}
    untied_heads = heads - {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    embedding = sum(p.numel() for key, p in distinct.items() if key in lookup and key not in untied_heads)
    stacks = [getattr(model, name) for name in model.stack_names]
    decoder, encoder = stacks[-1], (stacks[0] if len(stacks) > 1 else None)

    def first_block(stack) -> int:
        return count_parameters(stack.layers[0]) if len(stack.layers) else 0

    linear = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)}
    return ParameterCount(
        total=count_parameters(model), embedding=embedding, linear_weights=sum(linear.values()),
        block=first_block(decoder), n_blocks=len(decoder.layers),
        encoder_block=first_block(encoder) if encoder is not None else 0,
        n_encoder_blocks=len(encoder.layers) if encoder is not None else 0,
        method="meta",
    )


def count(cfg, kind: str = "causal") -> ParameterCount:
    """Parameters by formula, or from the meta-device model when a component is not built in."""
    try:
        return formula_count(cfg, kind)
    except UnknownComponent:
        return meta_count(cfg, kind)


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
