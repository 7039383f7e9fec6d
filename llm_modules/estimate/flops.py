"""Training FLOPs: per token and for a whole run (PaLM's ``6N + 12·L·H·Q·T``, i.e. 6ND plus attention).

The per-token count is ``training.model_flops.flops_per_token``, the same function the
ThroughputMonitor logs MFU with, so a plan and a run are measured on one scale. N there is the
parameters a token multiplies by (lookup tables left out, the LM head in); the conventional
``6ND`` with N = all parameters (Kaplan et al., 2020; GPT-3's 3.14e23 for 175B parameters and 300B
tokens) is reported beside it. Activation checkpointing recomputes each block's forward, which
costs hardware FLOPs (about 4/3 of the model FLOPs) but is not model FLOPs (MFU leaves it out).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class FlopsEstimate:
    per_token: float  # model FLOPs per trained token, forward and backward
    attention_per_token: float  # the 12·L·H·Q·T part of it
    tokens: float  # tokens of the whole run
    six_nd: float  # 6 x all parameters x tokens

    @property
    def dense_per_token(self) -> float:
        return self.per_token - self.attention_per_token

    @property
    def total(self) -> float:
        return self.per_token * self.tokens

    def hardware_total(self, checkpointing: bool) -> float:
        """FLOPs the hardware runs: recomputing the forward adds a third (2 of the 6 per parameter)."""
        return self.total * (8 / 6 if checkpointing else 1.0)

    def as_dict(self) -> dict:
        return {**asdict(self), "dense_per_token": self.dense_per_token, "total": self.total}


def attention_flops_per_token(cfg, seq_len: int, decoder_len: int | None = None) -> float:
    """The attention-score part of ``flops_per_token``: every query against every key, forward and
    backward (``12·H·Q`` per query-key pair and layer), averaged over the run's tokens."""
    hq = 12 * cfg.n_heads * cfg.dim_per_head
    if decoder_len is None:
        return hq * cfg.n_layers * seq_len
    te, td = seq_len, decoder_len
    return hq * (cfg.encoder_layers * te * te + cfg.n_layers * (td * td + td * te)) / (te + td)


def estimate_flops(cfg, total_parameters: float, tokens: float, seq_len: int,
                   decoder_len: int | None = None) -> FlopsEstimate:
    """FLOPs of training on ``tokens`` tokens in rows of ``seq_len`` (encoder-decoder: ``seq_len``
    encoder and ``decoder_len`` decoder tokens per row, tokens counting both)."""
    from llm_modules.estimate.cuda import as_sdpa
    from llm_modules.estimate.params import meta_model
    from llm_modules.training.model_flops import flops_per_token

    # the model flops_per_token would build (DecoderLM, or EncoderDecoderLM), on the meta device and
    # with a CUDA-only attention backend built as sdpa: the one the parameter count already built
    model = meta_model(cfg, "causal" if decoder_len is None else "seq2seq")
    per_token = flops_per_token(as_sdpa(cfg)[0], seq_len, decoder_len, model=model)
    return FlopsEstimate(
        per_token=per_token,
        attention_per_token=attention_flops_per_token(cfg, seq_len, decoder_len),
        tokens=float(tokens), six_nd=6.0 * total_parameters * tokens,
    )
