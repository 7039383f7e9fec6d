"""Helpers shared by the Hugging Face family modules.

Resolving a config slot to its effective options, the structural checks that every HF causal
decoder needs, a strict reader of HF tensors (every tensor must be used once), and the rules for
tied heads, which transformers decides from the weights rather than from config.json.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Iterable

import torch

from llm_modules.config import ModelConfig
from llm_modules.interop.family import StateDict
from llm_modules.models import CausalLM, LanguageModel
from llm_modules.nn.feedforward import default_hidden
from llm_modules.registry import REGISTRIES, ConfigError, split_spec


def hf_value(hf: dict[str, Any], *names: str, default: Any = None) -> Any:
    """The first of ``names`` present (and not null) in an HF config; configs rename fields across
    versions (``n_embd`` / ``hidden_size``, ``n_head`` / ``num_attention_heads``)."""
    for name in names:
        if hf.get(name) is not None:
            return hf[name]
    return default


def component(config: ModelConfig, slot: str) -> tuple[str, dict[str, Any]]:
    """A slot's name and the options its component is really built with.

    The model builder passes ``eps``/``d_ff``/``bias`` from the config's top-level fields, and a
    ``{name: ..., **options}`` slot value overrides them; signature defaults fill the rest. Reading
    the effective values here keeps export honest when, e.g., ``activation: {name: swiglu, bias: true}``
    differs from ``bias: false``.
    """
    name, options = split_spec(getattr(config, slot), slot)
    factory = REGISTRIES[slot].get(name).factory
    defaults = {
        p.name: p.default
        for p in inspect.signature(factory).parameters.values()
        if p.default is not inspect.Parameter.empty
    }
    provided = {"norm": {"eps": config.norm_eps}, "activation": {"d_ff": config.d_ff, "bias": config.bias}}
    return name, {**defaults, **provided.get(slot, {}), **options}


def require(config: ModelConfig, slot: str, family: str, names: Iterable[str], **fixed: Any) -> list[str]:
    """Mismatches if ``config.<slot>`` is not one of ``names`` or has an option other than ``fixed``."""
    names = tuple(names)
    name, options = component(config, slot)
    if name not in names:
        return [f"{slot} {name!r} (the {family} family has {' or '.join(map(repr, names))})"]
    return [
        f"{slot} {name!r} with {key}={options.get(key)!r} (the {family} family has {key}={want!r})"
        for key, want in fixed.items()
        if options.get(key) != want
    ]


def ffn_hidden(config: ModelConfig, gated: bool) -> int:
    """The feed-forward hidden size the model is built with (explicit, or the activation's default)."""
    return component(config, "activation")[1].get("d_ff") or default_hidden(config.d_model, gated)


def activation_to_hf(config: ModelConfig, table: dict[str, tuple[str, dict[str, Any]]]) -> str | None:
    """The HF activation name whose ``(our name, options)`` in ``table`` is the model's feed-forward,
    or None. Names are compared by the component they build, so aliases (silu/swish) match."""
    name, options = component(config, "activation")
    factory = REGISTRIES["activation"].get(name).factory
    for hf_name, (ours, fixed) in table.items():
        same = REGISTRIES["activation"].get(ours).factory is factory
        if same and all(options.get(k) == v for k, v in fixed.items()):
            return hf_name
    return None


def activation_from_hf(act: str, table: dict[str, tuple[str, dict[str, Any]]], family: str, **extra: Any) -> Any:
    """Our activation slot value for an HF activation name; an unknown one is a ConfigError."""
    if act not in table:
        raise ConfigError(f"{family} config.json: activation {act!r} is not supported; supported: {', '.join(table)}")
    name, options = table[act]
    options = {**options, **extra}
    return {"name": name, **options} if options else name


def default_attention_scale(config: ModelConfig) -> bool:
    """Whether attention scores are scaled by the usual 1/sqrt(head_dim)."""
    return config.attention_scale is None or math.isclose(
        config.attention_scale, config.dim_per_head**-0.5, rel_tol=1e-7
    )


def decoder_mismatches(config: ModelConfig, kind: type[LanguageModel], family: str) -> list[str]:
    """What no Hugging Face causal decoder here can express: the parts of the model outside the
    per-family choices (norm, activation, position, ...)."""
    problems = []
    if not issubclass(kind, CausalLM):
        problems.append(f"{kind.__name__} is not a causal decoder (the {family} family is a CausalLM)")
    problems += require(config, "residual", family, ["pre"])
    unsupported = {
        "sliding_window": (config.sliding_window, None),
        "sparse_stride": (config.sparse_stride, None),
        "embedding_grad_scale": (config.embedding_grad_scale, 1.0),
        "output_scale": (config.output_scale, 1.0),
        "head_transform": (config.head_transform, False),
        "lm_head_bias": (config.lm_head_bias, False),
        "type_vocab_size": (config.type_vocab_size, 0),
    }
    for field, (value, want) in unsupported.items():
        if value != want:
            problems.append(f"{field}={value!r} (the {family} family has {field}={want!r})")
    return problems


def full_heads_mismatches(config: ModelConfig, family: str) -> list[str]:
    """Families with one fused/classic attention: every head has its own key/value, head_dim = d/heads."""
    problems = []
    if config.kv_heads != config.n_heads:
        problems.append(f"n_kv_heads={config.kv_heads} < n_heads={config.n_heads} (the {family} family has no GQA/MQA)")
    if config.d_model % config.n_heads or config.dim_per_head * config.n_heads != config.d_model:
        problems.append(
            f"head_dim={config.dim_per_head} with d_model={config.d_model}, n_heads={config.n_heads} "
            f"(the {family} family needs head_dim = d_model / n_heads)"
        )
    return problems


def pad_token(hf: dict[str, Any], vocab_size: int) -> int:
    """HF's pad id when it is a usable token id, else 0 (our config needs one; padding is masked anyway)."""
    pad = hf.get("pad_token_id")
    return pad if isinstance(pad, int) and 0 <= pad < vocab_size else 0


class HFTensors:
    """HF tensors read strictly: a missing tensor is an error naming it, and tensors left unread
    (other than ``ignorable`` buffers) mean the checkpoint and its config.json disagree.

    ``prefixes`` are tried in order, so checkpoints saved with or without the base model's prefix
    (``transformer.h.0...`` vs ``h.0...``) both load.
    """

    def __init__(self, weights: StateDict, family: str, prefixes: Iterable[str] = ("",), ignorable: Iterable[str] = ()):
        self.weights, self.family = dict(weights), family
        self.prefixes, self.ignorable = tuple(prefixes), tuple(ignorable)
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return any(p + name in self.weights for p in self.prefixes)

    def take(self, name: str) -> torch.Tensor:
        for prefix in self.prefixes:
            if prefix + name in self.weights:
                self.used.add(prefix + name)
                return self.weights[prefix + name]
        raise ConfigError(
            f"{self.family} checkpoint: tensor {self.prefixes[0] + name!r} is missing; "
            "the weights do not match config.json"
        )

    def skip(self, name: str) -> None:
        """Mark a tensor as deliberately unused (e.g. a stored copy of a tied head)."""
        for prefix in self.prefixes:
            self.used.add(prefix + name)

    def check_all_used(self) -> None:
        left = sorted(
            k for k in self.weights if k not in self.used and not any(k.endswith(s) for s in self.ignorable)
        )
        if left:
            raise ConfigError(
                f"{self.family} checkpoint: {len(left)} tensor(s) that config.json does not account for, "
                f"e.g. {left[:3]}; the weights do not match config.json"
            )


def tie_head(state: StateDict, config: ModelConfig, weights: HFTensors, embedding: torch.Tensor, head_name: str) -> None:
    """Fill our head from HF: the embedding itself when tied (a stored copy is ignored), else ``head_name``."""
    if config.tie_embeddings:
        state["head.proj.weight"] = embedding
        weights.skip(head_name)
    else:
        state["head.proj.weight"] = weights.take(head_name)


def untie_if_head_differs(
    config: ModelConfig, weights: StateDict, embedding: str, prefixes: Iterable[str] = ("",), head: str = "lm_head.weight"
) -> ModelConfig:
    """Untie when the checkpoint holds a head that differs from the embedding, even under
    ``tie_word_embeddings: true``: transformers 5 then keeps the two apart (and only warns), so
    the logits to match are those of the separate head."""
    table = next((weights[p + embedding] for p in prefixes if p + embedding in weights), None)
    stored = weights.get(head)
    if config.tie_embeddings and table is not None and stored is not None and not torch.equal(table, stored):
        return config.replace(tie_embeddings=False)
    return config


# ---- LLaMA -------------------------------------------------------------------------------------------------

#: HF ``hidden_act`` -> our gated feed-forward, and back (the first HF name wins on export)


def decoder_hf_fields(config: ModelConfig) -> dict[str, Any]:
    """config.json fields every HF causal decoder shares. BOS/EOS are the config's (None when it
    has none: they belong to a tokenizer)."""
    return {
        "initializer_range": config.init_std,
        "tie_word_embeddings": config.tie_embeddings,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
    }
