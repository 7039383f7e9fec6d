"""PairsDataModule files and figures, and ``llm-modules validate`` on a checkpoint with a pairs file:
``.json`` lists read like JSONL, bits per byte counted once over the references, every record of a
file named on the command line evaluated with the checkpoint's own tokenizer (the logged loss equals
one computed by hand). Batch layouts per LM kind: tests/integration/test_evaluation.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _fit_helpers import SNIPPETS, metric_rows

from llm_modules import CausalLM, ModelConfig
from llm_modules.checkpoint import save_checkpoint
from llm_modules.cli import main
from llm_modules.data import PairsDataModule, Tokenizer
from llm_modules.data.pairs import IGNORE_INDEX, PairCollator
from llm_modules.registry import ConfigError

RECORDS = [{"input": f"print({i})", "output": f"return {i} + {i}"} for i in range(20)]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tok.model"
    texts = [s * 3 for s in SNIPPETS * 20] + [f"print({i}) return {i} + {i}\n" * 4 for i in range(40)]
    Tokenizer.train(iter(texts), path, vocab_size=320, num_sentinels=8)
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def loaded(tok_path: Path, path: Path, **kwargs) -> PairsDataModule:
    dm = PairsDataModule(val_paths=[str(path)], tokenizer=str(tok_path), kind="CausalLM", **kwargs)
    dm.setup("validate")
    return dm


def test_a_json_list_reads_like_jsonl(tok_path, tmp_path):
    lines = loaded(tok_path, write_jsonl(tmp_path / "pairs.jsonl", RECORDS))
    (tmp_path / "pairs.json").write_text(json.dumps(RECORDS, indent=2))
    listed = loaded(tok_path, tmp_path / "pairs.json")
    assert [(p.source_ids, p.target_ids, p.reference) for p in listed.val] == [
        (p.source_ids, p.target_ids, p.reference) for p in lines.val
    ]
    # the same keys for the hash split: a file keeps its split when converted
    assert [p.where.split(":")[1] for p in listed.val] == [p.where.split(":")[1] for p in lines.val]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (json.dumps([{"input": "a", "output": "b"}, {"input": "a"}]), r"bad.json record 2 has no text field 'output'"),
        (json.dumps({"input": "a", "output": "b"}), r"bad.json holds a JSON dict, not a list of records"),
        (json.dumps([["a", "b"]]), r"bad.json record 1 is not a JSON object"),
        ('[{"input": "a",\n "output": }]', r"bad.json is not JSON .* at line 2"),
    ],
)
def test_bad_json_files_name_the_record(tok_path, tmp_path, content, message):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(ConfigError, match=message):
        loaded(tok_path, tmp_path / "bad.json")


def test_bits_per_byte_counts_reference_bytes_once(tok_path, tmp_path, monkeypatch):
    dm = loaded(tok_path, write_jsonl(tmp_path / "pairs.jsonl", RECORDS), max_target_len=4)
    tok = dm.tokenizer
    # references cut to 3 tokens + EOS: the bytes are those of the text kept, the tokens include the EOS
    kept = [tok.decode(tok.encode(r["output"])[:3]) for r in RECORDS]
    tokens = sum(min(len(tok.encode(r["output"])), 3) + 1 for r in RECORDS)
    assert dm.bytes_per_token == pytest.approx(sum(len(t.encode()) for t in kept) / tokens)

    def no_decoding(*args, **kwargs):
        raise AssertionError("bytes_per_token decoded again")

    monkeypatch.setattr(tok, "decode", no_decoding)  # the model reads the figure at every validation step
    assert dm.bytes_per_token > 0


def test_validate_a_checkpoint_on_every_record_of_a_pairs_file(tok_path, tmp_path, monkeypatch):
    """``validate --ckpt_path X --data PairsDataModule --data.paths [F]``: no config, no tokenizer given."""
    monkeypatch.chdir(tmp_path)
    tok = Tokenizer.load(tok_path)
    torch.manual_seed(0)
    module = CausalLM(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, max_seq_len=64))
    module.tokenizer_bytes = tok.to_bytes()
    ckpt = save_checkpoint(module, tmp_path / "model.ckpt")
    data = write_jsonl(tmp_path / "pairs.jsonl", RECORDS)
    args = ["validate", "--ckpt_path", str(ckpt), "--data", "PairsDataModule", "--data.paths", f"[{data}]",
            "--data.batch_size", "8", "--trainer.enable_progress_bar", "false"]
    assert main(args) == 0
    run = tmp_path / "runs" / "llm" / "eval" / "version_0"
    (loss,) = [v for _, v in metric_rows(run, "val/loss")]
    (bpb,) = [v for _, v in metric_rows(run, "val/bits_per_byte")]

    # By hand: all 20 records (not a 10% validation split), tokenized with the checkpoint's tokenizer,
    # loss on the reference tokens and the EOS only.
    pairs = [(tok.encode(r["input"]), tok.encode(r["output"]) + [tok.eos_id]) for r in RECORDS]
    ids = [s + t for s, t in pairs]
    width = max(map(len, ids))
    input_ids = torch.tensor([row + [tok.pad_id] * (width - len(row)) for row in ids])
    targets = torch.full_like(input_ids, IGNORE_INDEX)
    for row, (source, target) in enumerate(pairs):
        targets[row, len(source) - 1 : len(source) + len(target) - 1] = torch.tensor(target)
    with torch.no_grad():
        logits = module.eval()(input_ids)
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX).item()
    assert loss == pytest.approx(expected, abs=1e-4)
    scored_bytes = sum(len(r["output"].encode()) for r in RECORDS)
    scored_tokens = sum(len(t) for _, t in pairs)
    assert bpb == pytest.approx(expected / math.log(2) * scored_tokens / scored_bytes, rel=1e-4)
    # the collator's layout is the one computed above
    assert torch.equal(PairCollator("CausalLM", tok.pad_id)(loaded(tok_path, data).val)["labels"], targets)
