"""Token cache, split, packing, shuffling, resume and mixtures of TextDataModule, on tiny corpora."""

from __future__ import annotations

import json
import logging
import os
import shutil

import lightning as L
import numpy as np
import pytest
import torch

from llm_modules.data import token_cache as token_cache_module
from llm_modules.data.datamodule import TextDataModule
from llm_modules.data.packing import PackedBlocks, split_documents
from llm_modules.data.sampling import ResumableSampler, largest_remainder, mixture_order
from llm_modules.data.sources import resolve_paths, stdlib_root
from llm_modules.data.token_cache import (
    build_token_cache,
    open_token_cache,
    token_dtype,
)
from llm_modules.data.tokenizer import Tokenizer
from llm_modules.registry import ConfigError

CORPUS_A = ["json/decoder.py", "json/encoder.py", "json/scanner.py", "json/tool.py", "textwrap.py", "shlex.py",
            "colorsys.py", "fnmatch.py", "bisect.py", "keyword.py", "glob.py", "stat.py"]
CORPUS_B = ["heapq.py", "queue.py", "sched.py", "this.py", "numbers.py", "graphlib.py"]
SEQ = 32


def copy_corpus(root, names):
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(stdlib_root() / name, root / name.replace("/", "_"))
    return root


def bump(path, text="\n# edited\n"):
    """Change a file and move its mtime forward, as an editor would."""
    st = path.stat()
    with open(path, "a") as f:
        f.write(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    texts = [(stdlib_root() / n).read_text() for n in CORPUS_A + CORPUS_B]
    path = tmp_path_factory.mktemp("tok") / "tiny.model"
    Tokenizer.train(iter(texts), path, vocab_size=400, num_sentinels=4)
    return str(path)


@pytest.fixture(scope="module")
def tok(tok_path):
    return Tokenizer.load(tok_path)


@pytest.fixture
def corpus(tmp_path):
    return copy_corpus(tmp_path / "a", CORPUS_A)


def make_dm(paths, tok_path, tmp_path, **kw):
    kw.setdefault("seq_len", SEQ)
    kw.setdefault("batch_size", 4)
    kw.setdefault("val_fraction", 0.2)
    return TextDataModule(paths=paths, tokenizer=tok_path, cache_dir=str(tmp_path / "cache"), **kw)


# ---- token cache ----------------------------------------------------------------------------------------


def test_cache_holds_each_document_exactly(corpus, tok, tmp_path):
    files = resolve_paths([str(corpus)])
    cache = build_token_cache(files, tok, tmp_path / "cache")
    assert cache.created and cache.num_documents == len(CORPUS_A)
    assert cache.tokens.dtype == np.uint16
    for i, f in enumerate(files):
        text = f.path.read_text()
        assert cache.source_ids[i] == f.source_id
        assert cache.document(i).tolist() == tok.encode(text)
        assert cache.doc_bytes[i] == len(text.encode())
    assert cache.meta["tokenizer_fingerprint"] == tok.fingerprint
    assert token_dtype(70_000) == np.uint32 and token_dtype(65_536) == np.uint16


def test_cache_reused_on_rerun(corpus, tok, tmp_path, monkeypatch):
    files = resolve_paths([str(corpus)])
    first = build_token_cache(files, tok, tmp_path / "cache")
    mtime = first.token_path.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(token_cache_module, "_write", lambda *a, **k: calls.append(a))
    again = build_token_cache(resolve_paths([str(corpus)]), tok, tmp_path / "cache")
    assert not again.created and not calls
    assert again.directory == first.directory and again.token_path.stat().st_mtime_ns == mtime


def test_cache_invalidated_by_changed_input_or_tokenizer(corpus, tok, tmp_path):
    files = resolve_paths([str(corpus)])
    first = build_token_cache(files, tok, tmp_path / "cache")
    bump(corpus / "bisect.py")
    changed = build_token_cache(resolve_paths([str(corpus)]), tok, tmp_path / "cache")
    assert changed.created and changed.key != first.key
    assert open_token_cache(first.directory) is not None  # the old entry is untouched
    other_tok = Tokenizer.train(iter([(stdlib_root() / "heapq.py").read_text()]), vocab_size=400, num_sentinels=4)
    retok = build_token_cache(resolve_paths([str(corpus)]), other_tok, tmp_path / "cache")
    assert retok.created and retok.key not in (first.key, changed.key)


def test_failed_build_leaves_existing_cache_intact(tmp_path, tok):
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"document {i} = {i * 7}\n"}) for i in range(20)) + "\n")
    good = build_token_cache(resolve_paths([str(data)]), tok, tmp_path / "cache")
    snapshot = np.array(good.tokens)
    with open(data, "a") as f:
        f.write(json.dumps({"body": "wrong field"}) + "\n")
    with pytest.raises(ConfigError, match=r"data\.paths\[0\]: .*line 21 has no 'text' field"):
        build_token_cache(resolve_paths([str(data)]), tok, tmp_path / "cache")
    entries = sorted(p.name for p in (tmp_path / "cache" / "tokens").iterdir())
    assert entries == [good.directory.name]  # no half-written entry, no temp folder left behind
    reopened = open_token_cache(good.directory)
    assert np.array_equal(np.array(reopened.tokens), snapshot)


def test_crash_mid_write_leaves_nothing(corpus, tok, tmp_path, monkeypatch):
    real_write = token_cache_module._write

    def crash(directory, *args):
        real_write(directory, *args)
        raise KeyboardInterrupt  # after writing everything, before the rename

    monkeypatch.setattr(token_cache_module, "_write", crash)
    with pytest.raises(KeyboardInterrupt):
        build_token_cache(resolve_paths([str(corpus)]), tok, tmp_path / "cache")
    assert list((tmp_path / "cache" / "tokens").iterdir()) == []


def test_stale_temp_folders_of_dead_runs_are_removed(corpus, tok, tmp_path):
    root = tmp_path / "cache" / "tokens"
    root.mkdir(parents=True)
    dead = root / ".abc.tmp-999999999-deadbeef"  # no such pid
    fresh = root / ".abc.tmp-999999999-cafecafe"
    mine = root / f".abc.tmp-{os.getpid()}-0badf00d"
    for d in (dead, fresh, mine):
        d.mkdir()
        (d / "tokens.bin").write_bytes(b"partial")
    old = (dead.stat().st_mtime - 3600, mine.stat().st_mtime - 3600)
    os.utime(dead, (old[0], old[0]))
    os.utime(mine, (old[1], old[1]))
    build_token_cache(resolve_paths([str(corpus)]), tok, tmp_path / "cache")
    assert not dead.exists() and fresh.exists() and mine.exists()


def test_truncated_cache_is_rebuilt(corpus, tok, tmp_path):
    first = build_token_cache(resolve_paths([str(corpus)]), tok, tmp_path / "cache")
    with open(first.token_path, "r+b") as f:
        f.truncate(10)
    assert open_token_cache(first.directory) is None
    again = build_token_cache(resolve_paths([str(corpus)]), tok, tmp_path / "cache")
    assert again.created and again.num_tokens == first.num_tokens


def test_empty_inputs_are_an_error(tmp_path, tok):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "empty.txt").write_text("")
    with pytest.raises(ConfigError, match=r"data\.paths: the inputs hold no text"):
        build_token_cache(resolve_paths([str(tmp_path / "d")]), tok, tmp_path / "cache")


# ---- split and packing ----------------------------------------------------------------------------------


def test_split_is_by_document_deterministic_and_proportional():
    names = [f"doc{i}.py" for i in range(2000)]
    train, val = split_documents(names, 0.1, seed=7)
    assert not set(train) & set(val) and len(train) + len(val) == len(names)
    assert 150 < len(val) < 250
    _, again_val = split_documents(names, 0.1, seed=7)
    assert np.array_equal(val, again_val)
    assert not np.array_equal(val, split_documents(names, 0.1, seed=8)[1])
    # adding documents does not move existing ones
    _, val_more = split_documents(names + ["new.py"], 0.1, seed=7)
    assert set(val_more) - {len(names)} == set(val)


def test_split_edge_cases():
    train, val = split_documents(["a", "b"], 0.01, seed=0)
    assert len(train) == 1 and len(val) == 1  # both splits exist on a tiny corpus
    train, val = split_documents(["a", "b", "c"], 0.99, seed=0)
    assert len(train) >= 1
    assert len(split_documents(["a"], 0.0, seed=0)[1]) == 0
    with pytest.raises(ConfigError, match=r"data\.val_fraction=0\.1: the data holds only 1 document.*val_fraction: 0"):
        split_documents(["a"], 0.1, seed=0)


def test_datamodule_split_has_no_shared_document(corpus, tok_path, tmp_path):
    dm = make_dm([str(corpus)], tok_path, tmp_path, val_fraction=0.3)
    dm.setup("fit")
    src = dm._sources[0]
    ids = src.cache.source_ids
    train_ids = {ids[i] for i in src.train.doc_order}
    val_ids = {ids[i] for i in src.val.doc_order}
    assert train_ids and val_ids and not train_ids & val_ids
    assert train_ids | val_ids == set(ids)


def test_packing_puts_eos_between_documents_and_fills_every_block(corpus, tok, tmp_path):
    cache = build_token_cache(resolve_paths([str(corpus)]), tok, tmp_path / "cache")
    order = np.array([3, 0, 5, 1])
    blocks = PackedBlocks(cache, order, seq_len=SEQ, eos_id=tok.eos_id)
    stream = np.concatenate([np.append(cache.document(i), tok.eos_id) for i in order])
    assert len(blocks) == len(stream) // SEQ
    got = torch.cat([blocks[k] for k in range(len(blocks))])
    assert torch.equal(got, torch.from_numpy(stream[: len(blocks) * SEQ].astype(np.int64)))
    assert all(blocks[k].shape == (SEQ,) and blocks[k].dtype == torch.long for k in range(len(blocks)))
    assert int((got == tok.eos_id).sum()) >= len(order) - 1
    with pytest.raises(IndexError):
        blocks[len(blocks)]


def test_tiny_documents_shorter_than_a_block(tmp_path, tok):
    data = tmp_path / "tiny.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"x{i}"}) for i in range(50)))
    cache = build_token_cache(resolve_paths([str(data)]), tok, tmp_path / "cache")
    blocks = PackedBlocks(cache, np.arange(50), seq_len=8, eos_id=tok.eos_id)
    stream = np.concatenate([np.append(cache.document(i), tok.eos_id) for i in range(50)])
    assert torch.equal(torch.cat([blocks[k] for k in range(len(blocks))]),
                       torch.from_numpy(stream[: len(blocks) * 8].astype(np.int64)))


def test_batches_and_bytes_per_token(corpus, tok_path, tmp_path):
    dm = make_dm([str(corpus)], tok_path, tmp_path)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids"}
    assert batch["input_ids"].shape == (4, SEQ) and batch["input_ids"].dtype == torch.long
    assert all(b["input_ids"].shape[1] == SEQ for b in dm.val_dataloader())
    assert len(dm.train_dataloader()) == dm.num_train_samples // 4
    val = dm._sources[0].val
    expected = val.num_bytes / (sum(len(dm.token_caches[0].document(i)) for i in val.doc_order) + len(val.doc_order))
    assert dm.bytes_per_token == pytest.approx(expected)
    assert 1.0 < dm.bytes_per_token < 6  # a 400-piece vocabulary: little over a byte per token
    assert dm.vocab_size == 400 and dm.tokenizer.eos_id == 3


def test_workers_give_the_same_batches(corpus, tok_path, tmp_path):
    plain = make_dm([str(corpus)], tok_path, tmp_path)
    workers = make_dm([str(corpus)], tok_path, tmp_path, num_workers=2)
    plain.setup("fit"), workers.setup("fit")
    for a, b in zip(plain.train_dataloader(), workers.train_dataloader()):
        assert torch.equal(a["input_ids"], b["input_ids"])


def test_no_validation_split(corpus, tok_path, tmp_path):
    dm = make_dm([str(corpus)], tok_path, tmp_path, val_fraction=0.0)
    dm.setup("fit")
    assert dm.val_dataloader() == []
    assert dm.bytes_per_token > 0  # falls back to the training split


# ---- shuffling and resume -------------------------------------------------------------------------------


def epoch_batches(dm):
    return [b["input_ids"] for b in dm.train_dataloader()]


def test_shuffle_is_deterministic_per_seed_and_epoch(corpus, tok_path, tmp_path):
    one, two = make_dm([str(corpus)], tok_path, tmp_path), make_dm([str(corpus)], tok_path, tmp_path)
    one.setup("fit"), two.setup("fit")
    loader_one, loader_two = one.train_dataloader(), two.train_dataloader()
    e0 = [b["input_ids"] for b in loader_one]
    assert all(torch.equal(a, b["input_ids"]) for a, b in zip(e0, loader_two))
    e1 = [b["input_ids"] for b in loader_one]  # the next iteration is the next epoch
    assert not all(torch.equal(a, b) for a, b in zip(e0, e1))
    sampler = loader_one.sampler
    assert sorted(sampler) == sorted(sampler) == list(range(one.num_train_samples))  # each epoch: every block once
    other = make_dm([str(corpus)], tok_path, tmp_path, seed=99)
    other.setup("fit")
    assert not all(torch.equal(a, b) for a, b in zip(e0, epoch_batches(other)))


def test_sampler_resume_continues_exactly():
    order = lambda epoch: np.random.default_rng([1, epoch]).permutation(40)
    full = ResumableSampler(order, 40)
    epochs = [list(full), list(full)]
    resumed = ResumableSampler(order, 40)
    resumed.resume(1, 12)
    assert list(resumed) == epochs[1][12:]
    # two ranks split what is left without overlap
    ranks = [ResumableSampler(order, 40, num_replicas=2, rank=r) for r in (0, 1)]
    for s in ranks:
        s.resume(0, 8)
    parts = [list(s) for s in ranks]
    assert sorted(parts[0] + parts[1]) == sorted(epochs[0][8:])


class Recorder(L.LightningModule):
    """Records the batches it trains on; learns nothing."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.extend(batch["input_ids"][:, :6].tolist())
        return (self.w * batch["input_ids"].float().mean()).sum()

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit(dm, ckpt_path=None, callbacks=(), **kw):
    model = Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=bool(callbacks),
                        callbacks=list(callbacks), enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=2, val_check_interval=50, **kw)
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model.seen


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_resume_from_checkpoint_continues_the_same_batches(corpus, tok_path, tmp_path):
    """A checkpoint mid-epoch (with validation runs in between) resumes on exactly the next batch."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    make = lambda: make_dm([str(corpus)], tok_path, tmp_path, batch_size=2)
    per_epoch = len(make_setup(make()).train_dataloader())
    stop = per_epoch + per_epoch // 2  # a checkpoint mid-way through the second epoch
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=stop, save_top_k=-1)
    full = fit(make(), callbacks=[saver], max_epochs=2)
    assert len(full) == 2 * per_epoch * 2
    ckpt_path = tmp_path / "ckpt" / f"step={stop}.ckpt"
    state = torch.load(ckpt_path, weights_only=True)["TextDataModule"]
    assert (state["epoch"], state["samples_consumed"]) == (1, (stop - per_epoch) * 2)
    rest = fit(make(), ckpt_path=str(ckpt_path), max_epochs=2)
    assert rest == full[stop * 2:]


def make_setup(dm):
    dm.setup("fit")
    return dm


def test_state_dict_without_trainer(corpus, tok_path, tmp_path):
    dm = make_dm([str(corpus)], tok_path, tmp_path)
    assert dm.state_dict()["epoch"] == 0 and dm.state_dict()["samples_consumed"] == 0
    dm.load_state_dict({"epoch": 2, "samples_consumed": 8, "seed": dm.seed})
    assert dm.state_dict()["epoch"] == 2  # kept until a sampler exists
    dm.setup("fit")
    reference = make_dm([str(corpus)], tok_path, tmp_path)
    reference.setup("fit")
    loader = reference.train_dataloader()
    for _ in range(3):
        expected = [b["input_ids"] for b in loader]
    resumed = epoch_batches(dm)
    assert all(torch.equal(a, b) for a, b in zip(resumed, expected[2:]))
    assert len(resumed) == len(expected) - 2


# ---- mixtures -------------------------------------------------------------------------------------------


def test_largest_remainder_and_mixture_order():
    assert largest_remainder([0.7, 0.3], 10).tolist() == [7, 3]
    assert largest_remainder([1, 1, 1], 10).sum() == 10
    order = mixture_order([5, 100], [0.5, 0.5], 60, seed=0, epoch=0)
    small = order[order < 5]
    assert len(small) == 30 and np.bincount(small).tolist() == [6] * 5  # repeats evenly
    assert np.array_equal(order, mixture_order([5, 100], [0.5, 0.5], 60, seed=0, epoch=0))


def test_mixture_honours_weights_and_reports_epochs(tmp_path, tok_path, caplog):
    a = copy_corpus(tmp_path / "a", CORPUS_A)
    b = copy_corpus(tmp_path / "b", CORPUS_B)
    dm = TextDataModule(mixture=[{"paths": [str(a)], "weight": 0.3, "name": "big"},
                                 {"paths": [str(b)], "weight": 0.7, "name": "small"}],
                        tokenizer=tok_path, cache_dir=str(tmp_path / "cache"), seq_len=SEQ, batch_size=4,
                        val_fraction=0.2, samples_per_epoch=400)
    with caplog.at_level(logging.INFO, logger="llm_modules.data.datamodule"):
        dm.setup("fit")
    big_blocks = len(dm._sources[0].train)
    indices = list(dm.train_dataloader().sampler)
    share_small = np.mean([i >= big_blocks for i in indices])
    assert share_small == pytest.approx(0.7, abs=0.01)
    small_blocks = len(dm._sources[1].train)
    first_batches = indices[:100]
    assert 0.55 < np.mean([i >= big_blocks for i in first_batches]) < 0.85  # interleaved, not in runs
    epochs = dm.effective_epochs(train_tokens=400 * SEQ)
    assert epochs["small"] == pytest.approx(0.7 * 400 / small_blocks)
    assert epochs["big"] == pytest.approx(0.3 * 400 / big_blocks)
    assert "data source 'small': weight 0.70" in caplog.text and "epochs over" in caplog.text


def test_parallel_weights_form(tmp_path, tok_path):
    a = copy_corpus(tmp_path / "a", CORPUS_A)
    b = copy_corpus(tmp_path / "b", CORPUS_B)
    dm = make_dm([str(a), str(b)], tok_path, tmp_path, weights=[1, 3])
    dm.setup("fit")
    assert dm.source_names == [str(a), str(b)]
    assert list(dm.effective_epochs(1000)) == [str(a), str(b)]
    indices = list(dm.train_dataloader().sampler)
    assert np.mean([i >= len(dm._sources[0].train) for i in indices]) == pytest.approx(0.75, abs=0.01)


# ---- tokenizer handling, collators, stdlib, errors ------------------------------------------------------


def test_tokenizer_trained_into_cache_and_reused(corpus, tmp_path):
    kw = {"paths": [str(corpus)], "cache_dir": str(tmp_path / "cache"), "seq_len": SEQ, "vocab_size": 480,
          "num_sentinels": 4, "val_fraction": 0.2}
    dm = TextDataModule(**kw)
    dm.setup("fit")
    models = list((tmp_path / "cache" / "tokenizers").glob("*.model"))
    assert len(models) == 1 and dm.tokenizer.vocab_size == 480
    mtime = models[0].stat().st_mtime_ns
    again = TextDataModule(**kw)
    assert again.tokenizer.fingerprint == dm.tokenizer.fingerprint
    assert models[0].stat().st_mtime_ns == mtime
    assert not again.tokenizer_path and again.tokenizer.source == str(models[0])
    named = TextDataModule(**{**kw, "tokenizer": str(tmp_path / "mine")})
    assert named.tokenizer.fingerprint == dm.tokenizer.fingerprint  # same data, seed and settings
    assert (tmp_path / "mine.model").is_file()


def test_missing_tokenizer_without_training(corpus, tmp_path):
    dm = TextDataModule(paths=[str(corpus)], tokenizer=str(tmp_path / "nope.model"), train_tokenizer=False,
                        cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"data\.tokenizer: .*nope\.model' does not exist.*train_tokenizer"):
        dm.setup("fit")
    with pytest.raises(ConfigError, match=r"data\.tokenizer: no tokenizer given"):
        TextDataModule(paths=[str(corpus)], train_tokenizer=False, cache_dir=str(tmp_path / "c")).setup("fit")


class SpanCollator:
    """Stands in for the objectives' collators: needs the tokenizer, gets 1-D blocks."""

    def __init__(self):
        self.sentinel = None

    def bind_tokenizer(self, tokenizer):
        self.sentinel = tokenizer.sentinel_ids[0]

    def __call__(self, examples):
        assert all(e.ndim == 1 and e.dtype == torch.long for e in examples)
        ids = torch.stack(examples)
        return {"input_ids": ids, "labels": torch.full_like(ids, self.sentinel)}


def test_custom_collate_fn(corpus, tok_path, tmp_path):
    dm = make_dm([str(corpus)], tok_path, tmp_path, collate_fn=SpanCollator())
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].unique().tolist() == [5] and batch["input_ids"].shape == (4, SEQ)
    assert set(next(iter(dm.val_dataloader()))) == {"input_ids", "labels"}


def test_python_stdlib_source_in_datamodule(tmp_path, tok_path, monkeypatch):
    fake = tmp_path / "lib"
    for rel in ["json/decoder.py", "textwrap.py", "shlex.py", "test/test_json.py", "idlelib/idle_test/x.py",
                "lib2to3/tests/data.py", "site-packages/pkg/mod.py", "unittest/test/t.py"]:
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(stdlib_root() / "textwrap.py", fake / rel)
    monkeypatch.setattr("llm_modules.data.sources.stdlib_root", lambda: fake)
    dm = make_dm(["python-stdlib"], tok_path, tmp_path, val_fraction=0.0)
    dm.setup("fit")
    assert sorted(dm.token_caches[0].source_ids) == ["python-stdlib/json/decoder.py", "python-stdlib/shlex.py",
                                                     "python-stdlib/textwrap.py"]


@pytest.mark.parametrize("kwargs, message", [
    ({"paths": None}, r"data\.paths: no data given"),
    ({"paths": ["x"], "mixture": [{"paths": ["y"]}]}, "either data.paths or data.mixture"),
    ({"paths": ["x", "y"], "weights": [1.0]}, r"data\.weights has 1 entries for 2 data\.paths"),
    ({"paths": ["x"], "weights": [-1.0]}, r"data\.weights\[0\]=-1\.0 must be a positive number"),
    ({"mixture": [{"paths": ["x"], "wieght": 2}]}, r"data\.mixture\[0\]: unknown key 'wieght' \(did you mean 'weight'\?\)"),
    ({"mixture": [{"weight": 2}]}, r"data\.mixture\[0\]: expected a mapping like"),
    ({"paths": ["x"], "seq_len": 0}, r"data\.seq_len=0 must be a positive integer"),
    ({"paths": ["x"], "val_fraction": 1.5}, r"data\.val_fraction=1\.5 must be in \[0, 1\]"),
    ({"paths": ["x"], "tokenizer_type": "wordpiece"}, r"data\.tokenizer_type 'wordpiece'"),
])
def test_config_errors_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TextDataModule(**kwargs)


def test_missing_path_in_mixture_names_the_entry(tmp_path, tok_path, corpus):
    dm = TextDataModule(mixture=[{"paths": [str(corpus)]}, {"paths": [str(corpus), "missing/"]}],
                        tokenizer=tok_path, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"data\.mixture\[1\]\.paths\[1\]: 'missing/' does not exist"):
        dm.setup("fit")
    dm = make_dm([str(corpus), "gone.txt"], tok_path, tmp_path, weights=[1, 1])
    with pytest.raises(ConfigError, match=r"data\.paths\[1\]: 'gone\.txt' does not exist"):
        dm.setup("fit")


def test_seq_len_longer_than_the_data(corpus, tok_path, tmp_path):
    dm = make_dm([str(corpus)], tok_path, tmp_path, seq_len=10**7)
    with pytest.raises(ConfigError, match=r"data\.seq_len=10000000 is longer than the training split"):
        dm.setup("fit")


def test_collator_class_built_from_tokenizer(corpus, tok_path, tmp_path):
    class Tagging:
        def __init__(self, eos_id):
            self.eos_id = eos_id

        @classmethod
        def from_tokenizer(cls, tokenizer):
            return cls(tokenizer.eos_id)

        def __call__(self, examples):
            return {"input_ids": torch.stack(examples), "eos": torch.tensor(self.eos_id)}

    dm = make_dm([str(corpus)], tok_path, tmp_path, collate_fn=Tagging)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["eos"].item() == 3


def test_built_from_yaml_by_jsonargparse(tmp_path, corpus, tok_path):
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(TextDataModule, "data")
    config = tmp_path / "data.yaml"
    config.write_text(
        "data:\n"
        f"  mixture:\n  - {{paths: [{corpus}], weight: 0.7}}\n  - {{paths: [{corpus}/bisect.py, {corpus}/glob.py], weight: 0.3}}\n"
        f"  tokenizer: {tok_path}\n  seq_len: 16\n  batch_size: 2\n  val_fraction: 0.0\n  cache_dir: {tmp_path / 'c'}\n"
    )
    cfg = parser.parse_args(["--config", str(config)])
    dm = parser.instantiate_classes(cfg).data
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["input_ids"].shape == (2, 16)
    assert len(dm.effective_epochs(10_000)) == 2


class Tagger:
    """A collator class whose id comes from the tokenizer, named in YAML by import path."""

    def __init__(self, eos_id, scale=1):
        self.eos_id, self.scale = eos_id, scale

    @classmethod
    def from_tokenizer(cls, tokenizer, **overrides):
        return cls(tokenizer.eos_id, **overrides)

    def __call__(self, examples):
        return {"input_ids": torch.stack(examples), "tag": torch.tensor(self.eos_id * self.scale)}


def test_collator_named_by_import_path(corpus, tok_path, tmp_path):
    dm = make_dm([str(corpus)], tok_path, tmp_path, collate_fn=f"{__name__}.Tagger", collate_args={"scale": 10})
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["tag"].item() == 30
    bad = make_dm([str(corpus)], tok_path, tmp_path, collate_fn=f"{__name__}.Tagger", collate_args={"scael": 1})
    bad.setup("fit")
    with pytest.raises(ConfigError, match=r"data\.collate_fn: cannot build Tagger.*data\.collate_args"):
        bad.train_dataloader()
    missing = make_dm([str(corpus)], tok_path, tmp_path, collate_fn="llm_modules.nowhere.Collator")
    missing.setup("fit")
    with pytest.raises(ConfigError, match=r"data\.collate_fn 'llm_modules\.nowhere\.Collator' cannot be imported"):
        missing.train_dataloader()
