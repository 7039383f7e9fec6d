"""A lean forward for one new token per row through a plain decoder: each step of generation
after the prompt.

At one token per row a decoder's arithmetic is small (batch x parameters multiply-adds) and the
module path (``DecoderLM.forward`` with a ``KVCache``) spends as much time again in Python and per-op
dispatch: a module call per norm, projection and dropout, a closure per sublayer, an autograd
Function per rotation, three projections where one would do. For the common layout (pre-norm
blocks of self-attention and an MLP, plain ``nn.Linear`` projections, no position bias)
``DecodeStep.build`` makes a step that runs the same math with few ops:

- the projections that read the same input are one product (q, k, v; an MLP's gate and up);
  on CPU in fp32 their weights are reordered once per generation into oneDNN's blocked layout
  (``torch.ops.mkldnn._reorder_linear_weight``), which a one-row product reads about twice as
  fast as the plain layout (what inductor's freezing does for CPU linears);
- queries and keys are rotated together, with the encoding's own cos/sin tables, computed once
  per step for all layers;
- keys and values are written in place into the session's preallocated ``KVCache``;
- one attention mask per step, shared by every layer, read by the stack's own backend.

The embedding, the stack's entry (scale, absolute positions, embedding norm), norms other than
RMSNorm and the final norm are the model's own modules, called once per step; so is the head,
unless it is a plain projection (then it is one more ``Projection``). Anything
else (MoE, quantized or adapted linears, QK-norm, soft-capping, cross-attention, sliding windows,
score biases, position encodings with state) has no lean step: ``build`` returns None and the
caller keeps the module path. ``tests/unit/test_decode_step.py`` checks the two agree.

Which parts it can run is what the parts declare: a component class whose forward is math this step
reproduces says which (``lean_decode = "rmsnorm"``, ``"rope"``, ``"gated-mlp"``...) in its own class
body. A subclass or a plugin inherits nothing of it (``lean_form`` reads the class's own
declaration), since it may compute something else; whatever does not declare a form decodes through
its own modules, which is always correct.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llm_modules.nn.fast import plain_tensors
from llm_modules.nn.kv_cache import CacheEntry, KVCache
from llm_modules.nn.linear import Linear
from llm_modules.nn.mask_inputs import MaskInputs, self_attention_mask
from llm_modules.nn.norms import fused_rms_norm

#: projections are reordered for oneDNN only while all of them together take at most this many
#: bytes: the reordered copy lives as long as the generation, beside the weights
PACK_LIMIT_BYTES = 2 * 2**30
#: ... and only for a generation of at least this many steps: the reorder reads and writes every
#: weight once (about three one-row steps' worth), which a few faster steps do not pay back
PACK_MIN_STEPS = 16


def lean_form(module: nn.Module | None) -> str | None:
    """The math ``module``'s own class declares this step reproduces (its ``lean_decode``), or None: a
    declaration is not inherited, as a subclass may compute something else."""
    return None if module is None else type(module).__dict__.get("lean_decode")


def plain_linear(module: nn.Module) -> bool:
    """torch's own ``nn.Linear`` or the model's ``nn.linear.Linear`` (the same product), holding plain
    tensors (not quantized, adapted or sharded)."""
    return type(module) in (nn.Linear, Linear) and plain_tensors(module.weight)


def packing_available(weight: torch.Tensor) -> bool:
    """Whether oneDNN's reordered linear serves this weight: fp32 on a CPU with oneDNN."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


class Projection:
    """Several ``nn.Linear`` that read the same input, as one product whose outputs lie side by side.

    ``rows`` (the rows per call, batch x 1) hints oneDNN's reorder; None keeps the plain weights
    and calls each linear (no copy of the weights at all)."""

    def __init__(self, linears: list[nn.Linear], rows: int | None):
        self.linears = linears
        self.packed = None
        if rows is not None:
            weight = torch.cat([m.weight for m in linears]) if len(linears) > 1 else linears[0].weight
            biases = [m.bias for m in linears]
            self.bias = None if biases[0] is None else torch.cat(biases) if len(biases) > 1 else biases[0]
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        if len(self.linears) == 1:
            return F.linear(x, self.linears[0].weight, self.linears[0].bias)
        return torch.cat([F.linear(x, m.weight, m.bias) for m in self.linears], dim=-1)


def _norm(module: nn.Module):
    """The norm as a function: RMSNorm in fp32 as the kernel its module's forward runs
    (``norms.fused_rms_norm``), without the autograd Function around it; any other norm as its module."""
    if lean_form(module) == "rmsnorm" and module.weight.dtype == torch.float32 and plain_tensors(module.weight):
        weight, eps = module.weight, module.eps
        return lambda x: fused_rms_norm(x, weight, eps)[0]
    return module


class _Layer:
    """One block's parts, as the step reads them."""

    def __init__(self, block: nn.Module, rows: int | None):
        attn, ffn = block.attn, block.ffn
        self.norm_attn, self.norm_ffn = (_norm(n) for n in block.residual.norms)
        self.qkv = Projection([attn.q, attn.k, attn.v], rows)
        self.o = Projection([attn.o], rows)
        self.heads, self.kv_heads, self.head_dim = attn.n_heads, attn.n_kv_heads, attn.head_dim
        self.scale = attn.scale
        self.grouped = self.kv_heads != self.heads
        self.act = ffn.act
        self.gated = lean_form(ffn) == "gated-mlp"
        self.up = Projection([ffn.gate, ffn.up] if self.gated else [ffn.up], rows)
        self.down = Projection([ffn.down], rows)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, up = self.up(x).chunk(2, dim=-1)
            return self.down(self.act(gate) * up)
        return self.down(self.act(self.up(x)))


class DecodeStep:
    """``step(tokens, attention_mask, cache, prefix_lengths)`` -> logits (B, V) of the next token
    after ``tokens`` (B, 1), as ``DecoderLM.forward(tokens, attention_mask, prefix_lengths,
    cache=cache)[:, -1]`` computes them (``attention_mask`` covers cached and new tokens)."""

    def __init__(self, model: nn.Module, rows: int | None):
        self.model, self.stack = model, model.stack
        self.layers = [_Layer(block, rows) for block in self.stack.layers]
        position = self.stack.position
        self.rope = position if position.rotates_qk else None
        head = model.head
        plain = lean_form(head) == "lm-head" and head.transform is None and head.scale == 1.0 \
            and head.softcap is None and plain_linear(head.proj)
        self.head = Projection([head.proj], rows if plain and packing_available(head.proj.weight) else None) \
            if plain else head

    @staticmethod
    def why_not(model: nn.Module) -> str | None:
        """Why ``model`` has no lean step (None: it has one)."""
        if lean_form(model) != "decoder":
            return f"{type(model).__name__} is not a plain DecoderLM"
        if any(m.training for m in model.modules()):
            return "training mode (the lean step has no dropout)"
        stack = model.stack
        if any(stack.sliding):
            return "sliding-window layers"
        if getattr(model.config, "sparse_stride", None):
            return "sparse attention (sparse_stride)"
        position = stack.position
        if position.adds_score_bias:
            return "a position encoding that adds a score bias"
        rope = lean_form(position) == "rope"
        if position.rotates_qk and not (rope and position.rot_dim == position.head_dim):
            return "a rotary encoding other than RoPE over whole heads"
        if rope and (position.scaling or {}).get("type") in ("dynamic", "longrope"):
            return "RoPE scaling whose frequencies change with the length (dynamic, longrope)"
        for block in stack.layers:
            attn, ffn = block.attn, block.ffn
            if block.cross_attn is not None or lean_form(block.residual) != "pre-norm":
                return "blocks other than pre-norm self-attention + feed-forward"
            if lean_form(attn) != "attention" or attn.qk_norm is not None or attn.softcap is not None:
                return "attention with QK-norm or soft-capping"
            if lean_form(ffn) not in ("mlp", "gated-mlp"):
                return f"feed-forward {type(ffn).__name__}"
            linears = [attn.q, attn.k, attn.v, attn.o, ffn.up, ffn.down] + ([ffn.gate] if lean_form(ffn) == "gated-mlp"
                                                                           else [])
            if not all(map(plain_linear, linears)):
                return "projections other than plain nn.Linear (quantized, adapted, sharded)"
        if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
            return "modules with forward hooks (adapters)"
        return None

    @classmethod
    def build(cls, model: nn.Module, rows: int, steps: int | None = None) -> "DecodeStep | None":
        """A lean step for ``model`` decoding ``rows`` rows at a time for ``steps`` steps (None: not
        known), or None where it has none."""
        if cls.why_not(model) is not None:
            return None
        weights = [m.weight for m in (*model.stack.modules(), *model.head.modules()) if isinstance(m, nn.Linear)]
        pack = all(packing_available(w) for w in weights) and (steps is None or steps >= PACK_MIN_STEPS) \
            and sum(w.numel() * w.element_size() for w in weights) <= PACK_LIMIT_BYTES
        return cls(model, rows if pack else None)

    def __call__(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None, cache: KVCache,
                 prefix_lengths: torch.Tensor | None = None) -> torch.Tensor:
        model, stack = self.model, self.stack
        x = model.embed(tokens)
        mask, positions = self_attention_mask(model.config, MaskInputs(True, attention_mask, prefix_lengths, cache), x)
        stack.position.check_length(mask.q_len + mask.q_offset)
        h = stack.enter(x, positions)
        if self.rope is not None:
            cos, sin = self.rope.tables(positions)  # (B or 1, 1, 1, D): broadcasts over (B, 1, heads, D)
            swap = self.rope._swap
        batch = h.shape[0]
        unmasked_sdpa = lean_form(stack.backend) == "sdpa" and mask.is_empty
        for i, layer in enumerate(self.layers):
            entry: CacheEntry = cache.layer(i).self_attn
            qkv = layer.qkv(layer.norm_attn(h)).view(batch, 1, -1, layer.head_dim)
            rotated = layer.heads + layer.kv_heads
            qk, v = qkv[:, :, :rotated], qkv[:, :, rotated:]
            if self.rope is not None:  # in fp32, as RoPE._rotate_one
                rot = qk.float()
                qk = torch.addcmul(rot * cos, swap(rot), sin).to(qkv.dtype)
            q, k = qk[:, :, : layer.heads].transpose(1, 2), qk[:, :, layer.heads :].transpose(1, 2)
            k, v = entry.append(k, v.transpose(1, 2))
            if unmasked_sdpa:  # what SDPAttention runs for an empty mask, without asking the mask per layer
                out = F.scaled_dot_product_attention(q, k, v, scale=layer.scale, enable_gqa=layer.grouped)
            else:
                out = stack.backend(q, k, v, mask, None, layer.scale)
            h = h + layer.o(out.transpose(1, 2).flatten(2))
            h = h + layer.mlp(layer.norm_ffn(h))
        cache.length += 1
        return self.head(stack.final_norm(h))[:, -1]
