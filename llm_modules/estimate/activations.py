"""Activation memory of a training step: the tensors autograd keeps from the forward for the backward.

Rather than a rule of thumb (``34·s·b·h`` per layer and the like, which assumes one architecture),
the forward of our stacks is replayed symbolically: each op of ``nn/`` is written here with what
autograd saves for it, and a ``Tape`` collects the saved tensors once each (several ops saving the
same tensor cost nothing extra). Sizes are per token, so a config of any size costs microseconds.
``tests/test_estimate.py`` compares the tape with what real models save
(``torch.autograd.graph.saved_tensors_hooks``) over a grid of configurations, precisions and LoRA.

What decides what is saved (PyTorch's derivative formulas save a factor only for the gradient of
an input that requires one):

- ``linear`` saves its input when its weight trains (the weight's gradient needs it); under
  autocast that input is its own half-precision cast of an fp32 tensor, one cast per linear, so
  q, k and v each keep a copy of the normalized hidden state. LoRA's A saves the input too and its
  B the r-wide product.
- our RMSNorm computes in fp32: it saves the fp32 input (a copy when the stream is half precision)
  and a per-token scale, and the normalized tensor when its weight trains; with fp32 input and weight
  (its hand-written backward) the normalized tensor and the scale only. LayerNorm saves its input.
- rotary embeddings save their fp32 cos/sin tables, one (1, T, rotated dims) pair per stack that
  every layer shares; fused attention (``sdpa`` and the kernel
  plugins) saves q, k, v, the output and a log-sum-exp per head, ``eager`` the (heads x keys)
  probabilities instead of a log-sum-exp. An additive bias (ALiBi, T5) merged with the mask is a
  (heads x T x T) tensor per layer; a structured mask (prefix, padding) a (T x T) bool per row.
- gated feed-forwards keep gate, up, activation and product (4 x d_ff), GELU MLPs 2 x d_ff, ReLU 1.
- dropout keeps a bool mask on CUDA, its scaled noise (input dtype) on the CPU.
- the loss (``nn.loss.cross_entropy``) keeps the logits themselves and a log-sum-exp per token; its
  fp32 work happens in chunks of rows, so no full-size fp32 copy or log-softmax exists.

Not modelled: mixture-of-experts routing (a token's top-k experts are counted as if each saw it)
and components from plugins (counted as the nearest built-in); ``Activations.approximate`` says so.
Padding masks are assumed absent (packed sequences).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_modules.nn.loss import CHUNK_ELEMENTS
from llm_modules.registry import split_spec

FP32, INDEX, MASK = 4, 8, 1
FUSED = ("sdpa", "flex", "flash_attn", "xformers")


@dataclass(eq=False)
class Tensor:
    """``elements`` per token of ``bytes`` each; ``grad``: whether it requires a gradient."""

    elements: float
    bytes: int
    grad: bool = True

    @property
    def size(self) -> float:
        return self.elements * self.bytes


@dataclass
class Tape:
    """The distinct tensors saved for backward, per token."""

    saved: list[Tensor] = field(default_factory=list)

    def save(self, *tensors: Tensor) -> None:
        for t in tensors:
            if all(t is not s for s in self.saved):
                self.saved.append(t)

    @property
    def bytes(self) -> float:
        return sum(t.size for t in self.saved)


@dataclass(frozen=True)
class Mode:
    """How a precision runs the model's math.

    ``stream``: bytes of the residual stream and embeddings; ``compute``: bytes of matmul outputs;
    ``autocast``: linears cast their fp32 inputs (mixed precision with fp32 parameters).
    """

    stream: int
    compute: int
    autocast: bool

    def cast(self, x: Tensor) -> Tensor:
        """What a matmul consumes: under autocast, a new half-precision copy of an fp32 input."""
        return Tensor(x.elements, self.compute, x.grad) if self.autocast and x.bytes != self.compute else x


def mode_for(precision: str, params_half: bool) -> Mode:
    """The math of a Lightning precision flag, given whether the strategy holds half-precision
    parameters (DeepSpeed and FSDP run mixed precision on half weights; plain autocast does not)."""
    if precision == "32-true":
        return Mode(FP32, FP32, False)
    if precision.endswith("-mixed") and not params_half:
        return Mode(FP32, 2, True)
    return Mode(2, 2, False)


@dataclass(frozen=True)
class Training:
    """Which weights train: all of them, or LoRA on the ``lora_targets`` linears (names inside a
    block, e.g. ``attn.q``, or ``head.proj``) with everything else frozen."""

    lora_rank: int = 0
    lora_targets: frozenset[str] = frozenset()

    @property
    def full(self) -> bool:
        return self.lora_rank == 0

    def adapted(self, linear: str) -> bool:
        return self.lora_rank > 0 and linear in self.lora_targets


class Ops:
    """The ops of ``nn/`` replayed on a tape, for a stack of ``seq_len`` tokens per row.

    A (1, heads, T, T) tensor shared by the batch counts ``heads * T / batch_size`` elements per
    token. ``memory_ratio``: encoder tokens per decoder token (cross-attention's keys).
    """

    def __init__(self, cfg, mode: Mode, training: Training, tape: Tape, *, seq_len: int, batch_size: int,
                 memory_ratio: float = 0.0, memory_grad: bool = True, device: str = "cuda",
                 structured_mask: bool = False, causal: bool = True):
        self.cfg, self.mode, self.training, self.tape, self.device = cfg, mode, training, tape, device
        self.seq_len, self.batch_size, self.memory_ratio = seq_len, batch_size, memory_ratio
        self.structured_mask = structured_mask  # prefix / bidirectional-with-padding: a dense mask
        #: tensors every block of the stack shares, which the caller counts once: the encoder output,
        #: and an attention bias (1, heads, T, T) that no causal mask is merged into
        self.memory = Tensor(cfg.d_model * memory_ratio, mode.stream, memory_grad)
        self.bias = Tensor(cfg.n_heads * seq_len / batch_size, FP32, False)
        self.rope_tables = Tensor(0, FP32, False)
        self.causal = causal
        self.approximate = False

    def new(self, elements: float, grad: bool, nbytes: int | None = None) -> Tensor:
        return Tensor(elements, self.mode.compute if nbytes is None else nbytes, grad)

    def save_for(self, needed: bool, *tensors: Tensor) -> None:
        if needed:
            self.tape.save(*tensors)

    # ---- ops ----------------------------------------------------------------------------------------------

    def linear(self, x: Tensor, out: int, name: str, ratio: float = 1.0) -> Tensor:
        """``x`` (``ratio`` rows per token) through the linear layer ``name``."""
        trains, adapted = self.training.full, self.training.adapted(name)
        self.save_for(trains, self.mode.cast(x))
        if adapted:  # x @ A^T saves x; (x @ A^T) @ B^T saves the r-wide product
            self.tape.save(self.mode.cast(x), self.new(self.training.lora_rank * ratio, True))
        return self.new(out * ratio, x.grad or trains or adapted)

    def norm(self, x: Tensor) -> Tensor:
        name, _ = split_spec(self.cfg.norm, "norm")
        trains, d = self.training.full, x.elements
        if name == "rmsnorm" and x.bytes == FP32 and self.mode.stream == FP32:
            # fp32 input and weight: the hand-written backward keeps the normalized tensor and the scale
            self.save_for(x.grad or trains, Tensor(d, FP32), Tensor(1, FP32))
            return Tensor(d, x.bytes, x.grad or trains)
        if name in ("rmsnorm", "scalenorm"):
            h = x if x.bytes == FP32 else Tensor(d, FP32, x.grad)  # statistics in fp32
            self.save_for(x.grad, h, Tensor(1, FP32))  # and a per-token scale
            self.save_for(trains, Tensor(d, x.bytes))  # weight * normalized: the weight's gradient
            return Tensor(d, x.bytes, x.grad or trains)
        if name != "layernorm":
            self.approximate = True
        if self.mode.autocast and x.bytes != FP32 and self.device == "cuda":
            x = Tensor(d, FP32, x.grad)  # CUDA's autocast runs layer_norm in fp32 (the CPU's does not)
        self.save_for(x.grad or trains, x, Tensor(2, FP32))  # input, mean and rstd
        return Tensor(d, x.bytes, x.grad or trains)

    def dropout(self, x: Tensor, p: float) -> Tensor:
        """CUDA's fused dropout keeps a bool mask; the CPU path keeps its scaled noise in x's dtype."""
        if not p:
            return x
        self.save_for(x.grad, Tensor(x.elements, MASK if self.device == "cuda" else x.bytes))
        return Tensor(x.elements, x.bytes, x.grad)

    # ---- sublayers ----------------------------------------------------------------------------------------

    def attention(self, h: Tensor, cross: bool) -> Tensor:
        cfg = self.cfg
        heads, kv = cfg.n_heads * cfg.dim_per_head, cfg.kv_heads * cfg.dim_per_head
        prefix = "cross_attn." if cross else "attn."
        q = self.linear(h, heads, prefix + "q")
        source, ratio = (self.memory, self.memory_ratio) if cross else (h, 1.0)
        k, v = self.linear(source, kv, prefix + "k", ratio), self.linear(source, kv, prefix + "v", ratio)
        position, options = split_spec(cfg.position, "position")
        fraction = options.get("fraction", 1.0) if position == "rope" else 1.0
        if position == "rope" and not cross:
            rotated = int(cfg.dim_per_head * fraction)
            # x * cos + swap(x) * signed_sin keeps the two tables: (1, T, rotated) fp32 each, made
            # once per stack and shared by every layer's queries and keys (nn.positions.RoPE.tables)
            self.rope_tables.elements = 2 * rotated / self.batch_size
            self.save_for(q.grad or k.grad, self.rope_tables)
            q, k = self.new(q.elements, q.grad), self.new(k.elements, k.grad)
        backend, _ = split_spec(cfg.attention, "attention")
        keys = self.seq_len * (self.memory_ratio if cross else 1)
        grad = q.grad or k.grad or v.grad
        masks = []
        if position in ("alibi", "t5") and not cross:
            # the bias merged with the mask: (1, heads, T, T) in the compute dtype, new in every layer
            # (an fp32 bias without a mask to merge is the stack's one tensor, passed to every layer)
            bias_grad = position == "t5" and self.training.full
            shared = not self.causal and self.mode.compute == FP32
            bias = self.bias if shared else self.new(cfg.n_heads * keys / self.batch_size, bias_grad)
            bias.grad = bias_grad
            masks.append(bias)
            grad = grad or bias_grad
            if bias_grad and self.causal:  # masked_fill keeps the mask for the bias's gradient
                self.tape.save(Tensor(keys / self.batch_size, MASK))
        elif self.structured_mask and not cross:
            # a (B, 1, T, T) bool mask, built in every layer, which sdpa turns into an additive one
            masks.append(self.new(keys, False))
        if backend == "sdpa" and self.device == "cpu" and masks and masks[0].grad:
            # a bias that needs a gradient (T5's) sends CPU sdpa to its math path: scaled q and k,
            # v, and the probabilities, upcast to fp32 for half precision
            groups = cfg.n_heads // cfg.kv_heads
            self.tape.save(Tensor(q.elements, FP32), Tensor(k.elements * groups, FP32),
                           Tensor(v.elements * groups, FP32), Tensor(cfg.n_heads * keys, FP32))
            out = self.new(heads, True)
        elif backend == "eager":
            groups = cfg.n_heads // cfg.kv_heads
            if groups > 1:  # repeat_kv
                k, v = self.new(k.elements * groups, k.grad), self.new(v.elements * groups, v.grad)
            # scores in fp32 (q.float() @ k.float()^T); under autocast the matmul casts both back to
            # half precision (new copies), and the scores and probabilities stay half
            qf = q if q.bytes == FP32 else Tensor(q.elements, FP32, q.grad)
            kf = k if k.bytes == FP32 else Tensor(k.elements, FP32, k.grad)
            probs = Tensor(cfg.n_heads * keys, FP32, grad)
            if self.mode.autocast:
                qf, kf = self.new(q.elements, q.grad), self.new(k.elements, k.grad)
                probs = self.new(probs.elements, grad)
            used = probs if probs.bytes == self.mode.compute else self.new(probs.elements, grad)
            self.save_for(kf.grad, qf)
            self.save_for(qf.grad, kf)
            self.save_for(grad, probs, Tensor(keys / self.batch_size, MASK))  # softmax; masked_fill's mask
            self.save_for(v.grad, used)
            self.save_for(grad, v)
            if cfg.attention_dropout:
                self.save_for(grad, Tensor(probs.elements, MASK if self.device == "cuda" else self.mode.compute))
            out = self.new(heads, grad or v.grad)
        else:
            if backend not in FUSED:
                self.approximate = True
            out = self.new(heads, grad)
            self.save_for(grad, q, k, v, out, *masks, Tensor(cfg.n_heads, FP32))  # and a log-sum-exp per head
            if fraction < 1 and not cross:
                # q is a fresh contiguous (B, H, T, D) tensor (torch.cat), so is the kernel's output,
                # and the output projection's (B, T, H*D) input is a copy of it
                out = self.new(heads, grad)
        return self.linear(out, cfg.d_model, prefix + "o")

    def feedforward(self, h: Tensor, spec=None, prefix: str = "ffn.") -> Tensor:
        from llm_modules.nn.feedforward import default_hidden

        cfg = self.cfg
        name, options = split_spec(cfg.activation if spec is None else spec, "activation")
        if name == "moe":  # the router's fp32 probabilities, and each token through top_k experts
            self.approximate = True
            experts = options.get("n_experts", 8)
            self.linear(h, experts, "ffn.router")
            self.save_for(h.grad or self.training.full, Tensor(experts, FP32))
            for _ in range(options.get("top_k", 2)):
                out = self.feedforward(h, options.get("expert", "swiglu"), "ffn.experts.0.")
            return out
        gated = name in ("glu", "bilinear", "reglu", "geglu", "swiglu")
        if name not in ("relu", "gelu", "swish", "silu") and not gated:
            self.approximate = True
        f = cfg.d_ff or default_hidden(cfg.d_model, gated)
        first = self.linear(h, f, prefix + ("gate" if gated else "up"))
        acted = first
        if name != "bilinear":
            acted = self.new(f, first.grad)
            keeps_result = name in ("relu", "reglu", "glu")  # relu and sigmoid save their result
            self.save_for(first.grad, acted if keeps_result else first)
        if gated:
            up = self.linear(h, f, prefix + "up")
            self.save_for(up.grad, acted)  # the product's factors, each for the other's gradient
            self.save_for(acted.grad, up)
            acted = self.new(f, up.grad or acted.grad)
        return self.linear(self.dropout(acted, cfg.dropout), cfg.d_model, prefix + "down")

    # ---- a block ------------------------------------------------------------------------------------------

    def block(self, x: Tensor, cross: bool = False) -> Tensor:
        """Replay one block (``nn/transformer.py``'s ``Block``) on ``x``; return its output."""
        layout, options = split_spec(self.cfg.residual, "residual")
        p = self.cfg.dropout
        sublayers = [lambda h: self.attention(h, False)]
        if cross:
            sublayers.append(lambda h: self.attention(h, True))
        sublayers.append(self.feedforward)

        def joined(*parts: Tensor) -> Tensor:  # a new residual stream tensor
            return Tensor(x.elements, self.mode.stream, any(t.grad for t in parts))

        if layout == "parallel":
            shared = self.norm(x) if options.get("shared_norm", True) else None
            outs = [self.dropout(f(shared if shared is not None else self.norm(x)), p) for f in sublayers]
            return joined(x, *outs)
        for f in sublayers:
            if layout in ("post", "deepnorm"):  # norm(x + f(x)), norm(alpha * x + f(x))
                x = self.norm(joined(x, self.dropout(f(x), p)))
            elif layout == "sandwich":  # x + norm_out(f(norm_in(x)))
                x = joined(x, self.dropout(self.norm(f(self.norm(x))), p))
            else:  # pre: x + f(norm(x))
                if layout != "pre":
                    self.approximate = True
                x = joined(x, self.dropout(f(self.norm(x)), p))
        return x


@dataclass(frozen=True)
class Activations:
    """Bytes one micro-batch keeps on one device, by where they sit, and the loss's transients."""

    blocks: float  # everything all blocks save
    block: float  # the most one block saves: what recomputing a checkpointed block rebuilds
    block_inputs: float  # what activation checkpointing keeps of the blocks instead
    outside: float  # embeddings, final norm, head and loss (the logits it keeps)
    forward_transient: float  # the loss's fp32 workspace (a chunk of rows) while it is computed
    backward_transient: float  # the loss's gradient over the vocabulary
    approximate: bool = False

    def saved(self, checkpointing: bool) -> float:
        return self.outside + (self.block_inputs if checkpointing else self.blocks)

    def as_dict(self) -> dict:
        return {
            "blocks": self.blocks, "block": self.block, "block_inputs": self.block_inputs, "outside": self.outside,
            "forward_transient": self.forward_transient, "backward_transient": self.backward_transient,
            "approximate": self.approximate,
        }


@dataclass
class _Stack:
    blocks: float = 0.0
    block: float = 0.0
    inputs: float = 0.0
    around: float = 0.0  # the stack's own tensors: embedding norm, dropout, final norm, T5 buckets
    memory: float = 0.0  # what all blocks share (encoder output, an unmasked bias), counted once
    output_grad: bool = True
    approximate: bool = False


def _stack(cfg, mode: Mode, training: Training, batch_size: int, seq_len: int, n_layers: int, *,
           cross: bool = False, memory_ratio: float = 0.0, memory_grad: bool = True, structured_mask: bool = False,
           causal: bool = True, device: str = "cuda") -> _Stack:
    """What one stack (``nn/transformer.py``'s ``Stack``) saves, in bytes.

    Its input requires a gradient only if the embeddings train; the first block is replayed on
    that input and the others on what the first returns (with frozen embeddings and LoRA, the
    first block saves less: nothing before its first adapted layer needs a gradient).
    """
    tokens = batch_size * seq_len

    def ops(tape: Tape) -> Ops:
        return Ops(cfg, mode, training, tape, seq_len=seq_len, batch_size=batch_size, memory_ratio=memory_ratio,
                   memory_grad=memory_grad, device=device, structured_mask=structured_mask, causal=causal)

    around_tape = Tape()
    around = ops(around_tape)
    x = Tensor(cfg.d_model, mode.stream, training.full)
    if cfg.embedding_norm:
        x = around.norm(x)
    x = around.dropout(x, cfg.dropout)
    position, _ = split_spec(cfg.position, "position")
    if training.full:  # the lookups' indices, for the tables' gradients
        if position == "t5":  # the bucket of each (query, key) pair
            around_tape.save(Tensor(seq_len / batch_size, INDEX))
        if position == "learned":  # positions 0..T-1, one row shared by the batch
            around_tape.save(Tensor(1 / batch_size, INDEX))
        if cfg.type_vocab_size:
            around_tape.save(Tensor(1, INDEX))

    def replay(x: Tensor) -> tuple[float, float, Tensor, bool]:
        """(bytes of one block, bytes of the encoder output it saves, its output, approximate)"""
        tape = Tape()
        block = ops(tape)
        out = block.block(x, cross)
        shared = sum(t.size for t in tape.saved if t is block.memory or t is block.bias or t is block.rope_tables)
        return (tape.bytes - shared) * tokens, shared * tokens, out, block.approximate

    blocks = largest = memory = 0.0
    approximate = around.approximate
    if n_layers:
        first, memory, out, approximate = replay(x)
        blocks = largest = first
        if n_layers > 1:
            # with frozen embeddings (LoRA) nothing before the first adapted layer needs a gradient,
            # so the first block saves less; from its output on, every block is the same
            later, memory2, out, approx2 = replay(out) if out.grad != x.grad else (first, memory, out, False)
            blocks, largest = first + later * (n_layers - 1), max(first, later)
            memory, approximate = max(memory, memory2), approximate or approx2
        x = out
    layout, _ = split_spec(cfg.residual, "residual")
    if layout not in ("post", "deepnorm"):
        around.norm(Tensor(cfg.d_model, mode.stream, x.grad))
    return _Stack(
        blocks=blocks, block=largest, inputs=cfg.d_model * mode.stream * tokens * n_layers,
        around=around_tape.bytes * tokens, memory=memory, output_grad=x.grad, approximate=approximate,
    )


def _head(cfg, mode: Mode, training: Training, tokens: int, kind: str, device: str) -> tuple[float, bool]:
    """What the LM head and the loss save, in bytes."""
    tape = Tape()
    head = Ops(cfg, mode, training, tape, seq_len=1, batch_size=1, device=device)
    save_ids = training.full  # the token embedding's backward keeps the ids
    h = Tensor(cfg.d_model, mode.stream, True)  # the final hidden state (a new tensor)
    if cfg.head_transform and kind != "seq2seq":  # BERT: dense, GELU (saves its input), norm
        h = head.linear(h, cfg.d_model, "head.transform.0")
        tape.save(h)
        h = head.norm(Tensor(cfg.d_model, h.bytes, h.grad))
    if cfg.output_scale != 1.0:
        h = Tensor(h.elements, h.bytes, h.grad)
    head.linear(h, cfg.vocab_size, "head.proj")
    # the loss (nn.loss.cross_entropy) keeps the logits, a log-sum-exp, the targets and their mask
    tape.save(Tensor(cfg.vocab_size, mode.compute), Tensor(1, FP32), Tensor(1, INDEX), Tensor(1, MASK))
    ids = INDEX if save_ids else 0
    return (tape.bytes + ids) * tokens, head.approximate


def estimate_activations(cfg, *, kind: str, precision: str, params_half: bool, batch_size: int, seq_len: int,
                         decoder_len: int | None = None, training: Training | None = None,
                         device: str = "cuda") -> Activations:
    """Activation bytes for ``batch_size`` rows of ``seq_len`` tokens on one device.

    Encoder-decoder models (``kind='seq2seq'``) read ``seq_len`` encoder tokens and
    ``decoder_len`` (default ``seq_len``) decoder tokens per row; the loss is over the decoder's.
    ``device``: ``cuda`` or ``cpu`` (they differ in what dropout keeps). A prefix LM's mask is a
    dense (T x T) bool per row in every layer.
    """
    mode = mode_for(precision, params_half)
    training = training or Training()
    common = {"device": device}
    if kind == "seq2seq":
        loss_len = decoder_len or seq_len
        encoder = _stack(cfg, mode, training, batch_size, seq_len, cfg.encoder_layers, causal=False, **common)
        decoder = _stack(cfg, mode, training, batch_size, loss_len, cfg.n_layers, cross=True,
                         memory_ratio=seq_len / loss_len, memory_grad=encoder.output_grad, **common)
        stacks = [encoder, decoder]
        encoder_ids = INDEX * batch_size * seq_len if training.full else 0
    else:
        loss_len = seq_len
        stacks = [_stack(cfg, mode, training, batch_size, seq_len, cfg.n_layers, structured_mask=kind == "prefix",
                         causal=kind != "masked", **common)]
        encoder_ids = 0
    head, head_approx = _head(cfg, mode, training, batch_size * loss_len, kind, device)
    vocab = cfg.vocab_size * batch_size * loss_len
    # the loss reads the logits in fp32 chunks: one chunk of log-sum-exp workspace (and its fp32
    # copy from half precision) in the forward; the backward writes one gradient of the logits'
    # dtype (through an fp32 chunk from half precision)
    chunk = FP32 * min(vocab, max(cfg.vocab_size, CHUNK_ELEMENTS // cfg.vocab_size * cfg.vocab_size))
    half = mode.compute != FP32
    forward = chunk * (2 if half else 1)
    backward = vocab * mode.compute + (chunk if half else 0)
    return Activations(
        blocks=sum(s.blocks for s in stacks), block=max(s.block for s in stacks),
        block_inputs=sum(s.inputs for s in stacks),
        outside=sum(s.around + s.memory for s in stacks) + head + encoder_ids,
        forward_transient=forward, backward_transient=backward,
        approximate=head_approx or any(s.approximate for s in stacks),
    )
