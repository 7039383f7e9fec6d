"""A prepared output directory is a data path: it resolves to exactly its shards, an unfinished one is
refused, and TextDataModule mixes prepared outputs in the proportions asked for."""

from __future__ import annotations

import random

import numpy as np
import pytest
from test_prepare import prose, read_shards, write_jsonl

from llm_modules.data.datamodule import TextDataModule
from llm_modules.data.prepare import from_dict, prepare
from llm_modules.data.sources import iter_documents, resolve_paths
from llm_modules.data.tokenizer import Tokenizer
from llm_modules.registry import ConfigError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Two finished preparations (web: 3 shards, code: 1) under one folder, and one interrupted."""
    root = tmp_path_factory.mktemp("prepared")
    rng = random.Random(31)
    outs = {}
    for name, n_docs, shard_docs in (("web", 30, 12), ("code", 12, None)):
        texts = [prose(rng, 150) for _ in range(n_docs)]
        texts.append(texts[0])  # one exact duplicate each
        src = write_jsonl(root / "raw" / f"{name}.jsonl", texts, field="body")
        config = from_dict({"inputs": [str(src)], "out": str(root / "out" / name), "text_field": "body",
                            "output": {"shard_docs": shard_docs}})
        report = prepare(config, progress=False)
        assert report["kept"]["documents"] == n_docs
        outs[name] = root / "out" / name
    unfinished = from_dict({"inputs": [str(root / "raw" / "web.jsonl")], "out": str(root / "unfinished"),
                            "text_field": "body", "executor": {"unit_mb": 0.001}})
    with pytest.raises(KeyboardInterrupt):
        prepare(unfinished, progress=False, stop_after=12)
    return root, outs


def test_prepared_directory_is_exactly_its_shards(prepared, monkeypatch):
    root, outs = prepared
    monkeypatch.chdir(root)
    files = resolve_paths(["out/web"], text_field="ignored-for-prepared-dirs")
    assert [f.source_id for f in files] == [f"out/web/shard-0000{i}.jsonl" for i in range(3)]
    assert {f.kind for f in files} == {"jsonl"} and {f.text_field for f in files} == {"text"}
    texts = [d.text for d in iter_documents(files)]
    assert texts == [row["text"] for row in read_shards(outs["web"])] and len(texts) == 30
    # a glob that matches prepared directories, and a folder holding them: the same shards
    globbed = resolve_paths(["out/*"])
    assert [f.source_id for f in globbed] == ["out/code/shard-00000.jsonl"] + [f.source_id for f in files]
    (root / "out" / "notes.txt").write_text("a plain file next to the prepared folders\n")
    try:
        folder = resolve_paths(["out"])
    finally:
        (root / "out" / "notes.txt").unlink()
    assert [f.source_id for f in folder] == ["out/notes.txt", "out/code/shard-00000.jsonl",
                                             *[f.source_id for f in files]]


def test_sources_knows_the_manifest_name():
    from llm_modules.data import sources
    from llm_modules.data.prepare import MANIFEST

    assert sources._PREPARE_MANIFEST == MANIFEST


def test_unfinished_preparation_is_refused(prepared, monkeypatch):
    root, _ = prepared
    monkeypatch.chdir(root)
    for entry in ("unfinished", "unfin*"):
        with pytest.raises(ConfigError, match=r"data\.paths\[0\]: 'unfinished' holds an unfinished 'llm-modules data "
                                              r"prepare' run .*rerun the same 'llm-modules data prepare' command"):
            resolve_paths([entry])
    dm = TextDataModule(mixture=[{"paths": [str(root / "out" / "web")]}, {"paths": [str(root / "unfinished")]}],
                        tokenizer="none.model", train_tokenizer=False, cache_dir=str(root / "cache"))
    with pytest.raises(ConfigError, match=r"data\.mixture\[1\]\.paths\[0\]: .*unfinished 'llm-modules data prepare'"):
        dm._resolve_sources()


def test_mixture_of_prepared_outputs_draws_in_proportion(prepared, tmp_path):
    _root, outs = prepared
    texts = [row["text"] for out in outs.values() for row in read_shards(out)]
    tok = tmp_path / "tok.model"
    Tokenizer.train(iter(texts), tok, vocab_size=300, num_sentinels=2)
    dm = TextDataModule(mixture=[{"paths": [str(outs["web"])], "weight": 0.7, "name": "web"},
                                 {"paths": [str(outs["code"])], "weight": 0.3, "name": "code"}],
                        tokenizer=str(tok), cache_dir=str(tmp_path / "cache"), seq_len=32, batch_size=4,
                        val_fraction=0.1, samples_per_epoch=1000)
    dm.setup("fit")
    assert dm.source_names == ["web", "code"]
    web_blocks = len(dm._sources[0].train)
    indices = list(dm.train_dataloader().sampler)
    assert len(indices) == 1000
    assert np.mean([i < web_blocks for i in indices]) == pytest.approx(0.7, abs=0.01)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 32)
