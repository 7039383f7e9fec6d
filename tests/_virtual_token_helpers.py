"""Shared by the virtual-token PEFT tests (prompt, ptuning, prefix): tiny models of every LM kind,
token batches, one forward call for any kind, and the cached-vs-uncached decoding gap."""

from __future__ import annotations

import torch

from llm_modules import CausalLM, MaskedLM, ModelConfig, PrefixLM, Seq2SeqLM
from llm_modules.generation.session import open_session
from llm_modules.peft import peft_state_dict

KINDS = {"llama-tiny": CausalLM, "gpt2-tiny": CausalLM, "bloom-tiny": CausalLM, "glm-tiny": PrefixLM,
         "t5-v1_1-tiny": Seq2SeqLM, "bert-tiny": MaskedLM}


def base_model(preset: str, seed: int = 0):
    """The torch model of a preset's LM kind, seeded, in eval mode."""
    torch.manual_seed(seed)
    return KINDS[preset](ModelConfig.from_preset(preset)).model.eval()


def ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 500, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(net, tokens, mask=None, prefix_lengths=None, decoder=None):
    """One forward of any kind: an encoder-decoder decodes ``decoder`` (default: the first 3 tokens)."""
    if hasattr(net, "encode"):
        return net(tokens, mask, decoder_input_ids=decoder if decoder is not None else tokens[:, :3])
    if getattr(net, "prefix", False):
        return net(tokens, mask, prefix_lengths)
    return net(tokens, mask)


def left_padded(lengths, seed=2):
    """Rows of the given real lengths, left-padded with id 0, and their attention mask."""
    total = max(lengths)
    mask = (torch.arange(total).unsqueeze(0) >= (total - torch.tensor(lengths)).unsqueeze(1)).long()
    return ids(len(lengths), total, seed).masked_fill(mask == 0, 0), mask


def max_step_difference(net, tokens, mask, steps=4):
    """The largest logit gap between a cached and an uncached session fed the same tokens (with a
    beam-search reorder that duplicates and drops rows mid-way)."""
    cached, plain = open_session(net, tokens, mask), open_session(net, tokens, mask, use_cache=False)
    worst = (cached.start() - plain.start()).abs().max().item()
    generator = torch.Generator().manual_seed(3)
    for step in range(steps):
        if step == 2:
            index = torch.tensor([1, 1, 0])
            cached.reorder(index), plain.reorder(index)
        new = torch.randint(3, 500, (cached.batch_size,), generator=generator)
        worst = max(worst, (cached.step(new) - plain.step(new)).abs().max().item())
    return worst


def train_a_few_steps_and_check(net, method, base: dict) -> None:
    """Three AdamW steps of next-token loss: every parameter of ``method`` moves, and the base
    weights (``base``: the state dict before the method was applied) stay bitwise equal."""
    before = {k: v.clone() for k, v in peft_state_dict(net, method).items()}
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    tokens = ids(4, 8)
    for _ in range(3):
        out = net(tokens)
        loss = torch.nn.functional.cross_entropy(out[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = peft_state_dict(net, method)
    assert all(not torch.equal(before[k], after[k]) for k in before), f"every {method.name} parameter trains"
    state = net.state_dict()
    assert all(torch.equal(base[k], state[k]) for k in base), "base weights stay bitwise equal"
