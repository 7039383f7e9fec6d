"""Helpers for the Hugging Face interop tests: random weights, padded batches, logit comparisons.

Generic over model kinds: inputs are keyword arguments that both our LightningModules and the
transformers models accept (input_ids, attention_mask, decoder_input_ids, token_type_ids).
"""

from __future__ import annotations

from pathlib import Path

import torch

import llm_modules

ATOL = 1e-4


def randomize_(model: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values (1-D weights, i.e. norm gains, around 1).

    transformers initialises norms to ones and biases to zeros, which would hide a swapped or
    misplaced norm/bias tensor in the conversion; random values expose it.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator) * std
            p.copy_(1.0 + noise if p.ndim == 1 and name.endswith("weight") else noise)
    return model


def right_padded(vocab_size: int, lengths: list[int], seed: int = 0, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` for rows of the given lengths, padded on the right."""
    generator = torch.Generator().manual_seed(seed)
    total = max(lengths)
    ids = torch.randint(1, vocab_size, (len(lengths), total), generator=generator)
    mask = (torch.arange(total).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
    return {"input_ids": ids.masked_fill(mask == 0, pad_id), "attention_mask": mask}


def logits_of(model: torch.nn.Module, **inputs: torch.Tensor) -> torch.Tensor:
    """Logits of our modules (a tensor) or of a transformers model (an output with ``.logits``)."""
    model.eval()
    with torch.no_grad():
        out = model(**inputs)
    return getattr(out, "logits", out).float()


def assert_logits_match(actual: torch.Tensor, expected: torch.Tensor, real: torch.Tensor, atol: float = ATOL) -> None:
    """Max abs difference at real (non-padding) positions is below ``atol``."""
    assert actual.shape == expected.shape, f"logit shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    keep = real.bool()
    diff = (actual[keep] - expected[keep]).abs().max().item()
    assert diff < atol, f"logits differ by {diff:.3g} (max abs) at real positions; tolerance {atol}"


def load_hf(auto_class, path: str | Path) -> torch.nn.Module:
    """Load with transformers, failing if any weight was missing, unexpected or the wrong shape
    (transformers would otherwise fill missing weights randomly and only warn)."""
    model, info = auto_class.from_pretrained(path, output_loading_info=True)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info.get(kind), f"transformers reports {kind} loading {path}: {info[kind]}"
    return model.float().eval()


def assert_round_trip(hf_model, tmp_path: Path, inputs: dict[str, torch.Tensor], real: torch.Tensor, auto_class):
    """save_pretrained -> from_hf matches HF; to_hf -> transformers matches HF again. Returns our module."""
    hf_dir, out_dir = tmp_path / "hf", tmp_path / "exported"
    hf_model.save_pretrained(hf_dir)
    expected = logits_of(hf_model, **inputs)
    ours = llm_modules.from_hf(hf_dir)
    assert_logits_match(logits_of(ours, **inputs), expected, real)
    llm_modules.to_hf(ours, out_dir)
    assert_logits_match(logits_of(load_hf(auto_class, out_dir), **inputs), expected, real)
    return ours


def left_padded_prompts(vocab_size: int, lengths: tuple[int, ...] = (7, 4, 2), pad_id: int = 1, seed: int = 1):
    """``(ids, mask)``: prompts of the given lengths, padded on the left (as decoders generate)."""
    width = max(lengths)
    ids = torch.randint(3, vocab_size, (len(lengths), width), generator=torch.Generator().manual_seed(seed))
    mask = (torch.arange(width).unsqueeze(0) >= width - torch.tensor(lengths).unsqueeze(1)).long()
    return ids.masked_fill(mask == 0, pad_id), mask


def assert_generate_matches(hf_model, ours, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int = 12,
                            pad_id: int = 1, searches: tuple[dict, ...] = ({}, {"num_beams": 4})) -> None:
    """Our ``generate`` gives the same ids as transformers' for greedy and beam search (by default),
    stopping at a token our model really emits after a few steps, so rows end at different steps."""
    from llm_modules.generation import generate

    free = generate(ours, ids, mask, max_new_tokens=new_tokens, eos_token_id=[])
    values, counts = free[:, -new_tokens:][:, 2:].unique(return_counts=True)
    eos = [int(values[counts.argmax()])]
    for options in searches:
        with torch.no_grad():
            expected = hf_model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, pad_token_id=pad_id,
                                         eos_token_id=eos, do_sample=False, **options)
        got = generate(ours, ids, mask, max_new_tokens=new_tokens, pad_token_id=pad_id, eos_token_id=eos, **options)
        assert torch.equal(got, expected), f"{options or 'greedy'} with eos {eos}:\nours {got.tolist()}\nhf   {expected.tolist()}"
