"""ModelConfig: the whole model as plain data (numbers, strings, and name-or-mapping component slots)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union

import yaml

from llm_modules.registry import MODEL_REGISTRIES, ConfigError, load_plugins

#: a component slot: a registered name, or {name: ..., <the component's keyword arguments>}
Component = Union[str, dict[str, Any]]


@dataclass
class ModelConfig:
    """Architecture of a transformer LM. Every field is plain data, so configs round-trip through YAML.

    Component slots (``norm``, ``residual``, ``activation``, ``position``, ``attention``) take a
    registered name or a mapping ``{name: ..., **options}``; ``llm-modules registry`` lists the names.
    """

    vocab_size: int = 32000
    d_model: int = 512
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int | None = None
    d_ff: int | None = None
    head_dim: int | None = None
    n_encoder_layers: int | None = None

    norm: Component = "layernorm"
    residual: Component = "pre"
    activation: Component = "gelu"
    position: Component = "learned"
    attention: Component = "sdpa"

    bias: bool = True
    # Per-projection biases where a family differs from ``bias`` (Qwen2: q/k/v only); None: ``bias``.
    # The feed-forward's bias is the activation slot's own option (``activation: {name: .., bias: ..}``).
    qkv_bias: bool | None = None
    out_bias: bool | None = None
    lm_head_bias: bool = False
    head_transform: bool = False
    max_seq_len: int = 512
    norm_eps: float = 1e-5
    dropout: float = 0.0
    attention_dropout: float = 0.0
    attention_scale: float | None = None
    sliding_window: int | None = None
    sparse_stride: int | None = None
    # Which layers attend through ``sliding_window``: one entry per layer, "sliding" or "full"
    # (Gemma 2/3 alternate them); None: every layer is windowed when sliding_window is set.
    layer_types: list[str] | None = None
    # RMS-normalize queries and keys before RoPE: "head" (each head over head_dim: Qwen3, Gemma 3) or
    # "all" (over all heads' features of the projection: OLMo 2); the norm is ``norm``'s kind.
    qk_norm: str | None = None
    # Soft-capping cap * tanh(x / cap) of attention scores (before the mask) and of the final logits
    # (Gemma 2); None: off.
    attention_softcap: float | None = None
    logit_softcap: float | None = None

    tie_embeddings: bool = True
    embedding_norm: bool = False
    type_vocab_size: int = 0
    embedding_grad_scale: float = 1.0
    # A factor on the token embeddings entering the stacks (Gemma: sqrt(d_model)), applied in the
    # activations' dtype as transformers does.
    embedding_scale: float = 1.0
    output_scale: float = 1.0
    init_std: float = 0.02
    pad_token_id: int = 0
    # Where generation starts and stops by default (from the tokenizer when training, from the
    # Hugging Face config on import); None: no such token.
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    plugins: list[str] = field(default_factory=list)

    # ---- checks -------------------------------------------------------------------------------------------

    def __post_init__(self) -> None:
        # The one place a config is checked: here, when it is made, and again whenever a field is
        # set afterwards (``__setattr__``), so a ModelConfig is valid wherever it is used and
        # nothing that builds from one checks it again. A typo fails where it is made.
        self.validate()
        object.__setattr__(self, "_checked", True)

    def __setattr__(self, name: str, value: Any) -> None:
        """Set a field and check the whole config again; a refused value leaves the old one."""
        if not self.__dict__.get("_checked"):  # still in __init__: __post_init__ checks the whole
            object.__setattr__(self, name, value)
            return
        missing = object()
        old = self.__dict__.get(name, missing)
        object.__setattr__(self, name, value)
        try:
            self.validate()
        except ConfigError:
            if old is missing:
                object.__delattr__(self, name)
            else:
                object.__setattr__(self, name, old)
            raise

    def validate(self) -> None:
        """Check numbers and component names; raise ConfigError naming the field and the fix.
        Plugins load first (``registry.load_plugins``), so the component names they register resolve."""
        if self.plugins:
            load_plugins(self.plugins)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer; got {value!r}")
        for name in ("n_kv_heads", "d_ff", "head_dim", "sliding_window", "sparse_stride"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or null; got {value!r}")
        if self.n_encoder_layers is not None and self.n_encoder_layers < 0:
            raise ConfigError(f"n_encoder_layers must be >= 0 or null; got {self.n_encoder_layers}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ConfigError(
                f"n_heads={self.n_heads} does not divide d_model={self.d_model}; "
                "choose n_heads that divides d_model, or set head_dim explicitly"
            )
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} "
                "(1 = multi-query, n_heads = multi-head, anything between = grouped-query)"
            )
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1); got {getattr(self, name)}")
        self._validate_layer_features()
        if not 0.0 < self.embedding_grad_scale <= 1.0:
            raise ConfigError(f"embedding_grad_scale must be in (0, 1]; got {self.embedding_grad_scale}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"pad_token_id={self.pad_token_id} must be a token id below vocab_size={self.vocab_size}")
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.vocab_size):
                raise ConfigError(f"{name}={value!r} must be null or a token id below vocab_size={self.vocab_size}")
        # The built-in components register when their package is imported; imported here, where
        # names are looked up, and not at module level: configs are read by commands that build
        # no model (data prepare, estimate's argument parsing), which need not import torch.
        import llm_modules.nn  # noqa: F401

        for slot, registry in MODEL_REGISTRIES.items():
            registry.validate(getattr(self, slot))

    def _validate_layer_features(self) -> None:
        """The fields of issue-21 features: per-layer windows, QK-norm, soft-caps, embedding scale."""
        for name in ("attention_softcap", "logit_softcap"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ConfigError(f"{name} must be a positive number or null (off); got {value!r}")
        if isinstance(self.embedding_scale, bool) or not isinstance(self.embedding_scale, (int, float)) \
                or self.embedding_scale <= 0:
            raise ConfigError(f"embedding_scale must be a positive number; got {self.embedding_scale!r}")
        if self.qk_norm not in (None, "head", "all"):
            raise ConfigError(f"qk_norm must be 'head' (per head), 'all' (over the whole projection) or null; "
                              f"got {self.qk_norm!r}")
        for name in ("qkv_bias", "out_bias"):
            if getattr(self, name) not in (None, True, False):
                raise ConfigError(f"{name} must be true, false or null (follow bias); got {getattr(self, name)!r}")
        if self.layer_types is None:
            return
        types = self.layer_types
        if not isinstance(types, (list, tuple)) or len(types) != self.n_layers:
            raise ConfigError(f"layer_types must list one entry per layer (n_layers={self.n_layers}), each "
                              f"'sliding' or 'full'; got {types!r}")
        bad = [t for t in types if t not in ("sliding", "full")]
        if bad:
            import difflib

            close = difflib.get_close_matches(str(bad[0]), ["sliding", "full"], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"layer_types: {bad[0]!r} is not a layer type{hint}; use 'sliding' or 'full'")
        if "sliding" in types and self.sliding_window is None:
            raise ConfigError("layer_types has 'sliding' layers but sliding_window is null; set sliding_window "
                              "(the window size in tokens) or make every layer 'full'")

    # ---- derived ------------------------------------------------------------------------------------------

    @property
    def sliding_layers(self) -> list[bool]:
        """Per layer, whether it attends through ``sliding_window``."""
        if self.sliding_window is None:
            return [False] * self.n_layers
        if self.layer_types is None:
            return [True] * self.n_layers
        return [t == "sliding" for t in self.layer_types]

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def encoder_layers(self) -> int:
        return self.n_layers if self.n_encoder_layers is None else self.n_encoder_layers

    # ---- plain data ---------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"a model config must be a mapping of fields; got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown model config field {unknown[0]!r}{hint}; fields: {', '.join(sorted(known))}")
        return cls(**data)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        """Load YAML or JSON (JSON is YAML); a file with a top-level ``config:`` key is unwrapped."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as err:
            raise ConfigError(f"cannot read model config {str(path)!r}: {err.strerror}") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"model config {str(path)!r} is not valid YAML/JSON: {err}") from err
        if isinstance(data, dict) and set(data) == {"config"}:
            data = data["config"]
        return cls.from_dict(data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        """A shipped preset by name (``llama-tiny``, ``llama-7b``, ...), with optional field overrides."""
        presets = preset_names()
        if name not in presets:
            import difflib

            close = difflib.get_close_matches(name, presets, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown preset {name!r}{hint}; presets: {', '.join(presets)}")
        data = yaml.safe_load(preset_dir().joinpath(f"{name}.yaml").read_text())
        data.update(overrides)
        return cls.from_dict(data)


def check_seq_len(seq_len: int, max_seq_len: int, option: str, fix: str, encoder_decoder: bool = False) -> None:
    """Refuse rows longer than the model's context (``max_seq_len``), whatever its position
    encoding: RoPE or ALiBi would run past it, but the model was neither sized nor meant to (and
    a learned table would index past its end). Shared by ``estimate`` and the model's check of
    its data; encoder-decoder models are exempt (``seq_len`` is the encoder's, relative positions)."""
    if not encoder_decoder and seq_len > max_seq_len:
        raise ConfigError(f"{option} {seq_len} exceeds the model's max_seq_len {max_seq_len}; {fix}")


def preset_dir():
    """Where the preset YAMLs live: inside the installed package, or ``configs/models`` in a checkout."""
    packaged = resources.files("llm_modules").joinpath("configs", "models")
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "configs" / "models"


def preset_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in preset_dir().iterdir() if p.name.endswith(".yaml"))
