"""Hugging Face folders as users have them (issue 21): sharded safetensors read and written, weights
kept in their stored dtype or cast, and loading that assigns the memory-mapped tensors to a model
built on the meta device (no second copy; ties, RoPE and ALiBi buffers as an eager load has them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file

import llm_modules
from llm_modules import CausalLM, ConfigError, ModelConfig
from llm_modules.cli import main
from llm_modules.interop import read_hf_model
from llm_modules.interop.shards import parse_size
from llm_modules.models import KINDS

from hf_helpers import load_hf, logits_of, randomize_

VOCAB = 97


def tiny_llama(dtype=torch.float32, **overrides) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    settings = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**settings, **overrides}))
    return randomize_(model).to(dtype).eval()


def ours(**fields) -> CausalLM:
    torch.manual_seed(0)
    config = ModelConfig.from_preset("llama-tiny").replace(vocab_size=VOCAB, n_layers=3, n_kv_heads=2, d_ff=96,
                                                           max_seq_len=64, **fields)
    return randomize_(CausalLM(config)).eval()


def ids(n: int = 2, t: int = 7) -> torch.Tensor:
    return torch.randint(1, VOCAB, (n, t), generator=torch.Generator().manual_seed(1))


def bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)) for k in a)


def shard_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.safetensors"))


# ---- sharded safetensors -----------------------------------------------------------------------------------


def test_sizes_read_like_huggingface_hub():
    assert parse_size("500MB") == 500_000_000 and parse_size("2GB") == 2_000_000_000 and parse_size(4096) == 4096
    assert parse_size("1.5KB") == 1500 and parse_size("1GiB") == 2**30 and parse_size("123") == 123
    for bad in ("2XB", "GB", "-1", 0, "two"):
        with pytest.raises(ConfigError, match="max_shard_size"):
            parse_size(bad)


def test_an_export_sharded_into_three_or_more_loads_back_bitwise_and_in_transformers(tmp_path):
    module = ours()
    per_layer = sum(p.numel() * 4 for n, p in module.model.named_parameters() if ".layers.0." in n)
    out = llm_modules.to_hf(module, tmp_path / "hf", max_shard_size=per_layer + 1)
    names = shard_names(out)
    assert len(names) >= 3 and names == [f"model-{i:05d}-of-{len(names):05d}.safetensors" for i in range(1, len(names) + 1)]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    total = 0
    for name in names:
        with safe_open(out / name, "pt") as f:
            assert all(index["weight_map"][key] == name for key in f.keys())
            total += sum(f.get_tensor(key).nbytes for key in f.keys())
    assert index["metadata"]["total_size"] == total and len(index["weight_map"]) == len(module.model.state_dict())

    again = llm_modules.from_hf(out)
    assert bitwise_equal(again.model.state_dict(), module.model.state_dict())
    theirs = load_hf(transformers.AutoModelForCausalLM, out)  # fails on any missing or unexpected key
    torch.testing.assert_close(logits_of(theirs, input_ids=ids()), logits_of(module, input_ids=ids()), atol=1e-4, rtol=0)

    # a smaller export into the same folder (Python API, no prune): no shard or index of the old one stays
    (out / "adapter.safetensors").write_bytes(b"kept")
    llm_modules.to_hf(module, out)
    assert shard_names(out) == ["adapter.safetensors", "model.safetensors"]
    assert not (out / "model.safetensors.index.json").exists()
    assert bitwise_equal(llm_modules.from_hf(out).model.state_dict(), module.model.state_dict())


def test_a_folder_sharded_by_transformers_loads(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path, max_shard_size="60KB")
    assert len(shard_names(tmp_path)) >= 3
    loaded = llm_modules.from_hf(tmp_path)
    torch.testing.assert_close(logits_of(loaded, input_ids=ids()), logits_of(model, input_ids=ids()), atol=1e-4, rtol=0)


@pytest.fixture()
def sharded(tmp_path) -> Path:
    tiny_llama().save_pretrained(tmp_path / "hf", max_shard_size="60KB")
    return tmp_path / "hf"


def edit_index(folder: Path, change) -> None:
    path = folder / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    change(index["weight_map"])
    path.write_text(json.dumps(index))


def test_the_index_decides_which_shards_are_read_and_stray_files_are_ignored(sharded):
    expected = logits_of(llm_modules.from_hf(sharded), input_ids=ids())
    # a consolidated copy (Mistral ships one) and an older model's shard beside the index: not read
    save_file({"model.embed_tokens.weight": torch.zeros(3, 3)}, sharded / "consolidated.safetensors")
    save_file({"lm_head.weight": torch.zeros(3, 3)}, sharded / "model-00009-of-00009.safetensors")
    assert torch.equal(logits_of(llm_modules.from_hf(sharded), input_ids=ids()), expected)


def _missing_shard(folder):
    (folder / shard_names(folder)[1]).unlink()


def _misplaced(folder):
    edit_index(folder, lambda m: m.update({"lm_head.weight": next(v for v in m.values() if v != m["lm_head.weight"])}))


def _named_twice_in_json(folder):
    path = folder / "model.safetensors.index.json"
    text = path.read_text()
    path.write_text(text.replace('"weight_map": {', f'"weight_map": {{\n "lm_head.weight": "{shard_names(folder)[0]}",'))


def _held_by_two_shards(folder):
    first = folder / shard_names(folder)[0]
    with safe_open(first, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    with safe_open(folder / shard_names(folder)[-1], "pt") as f:
        name = next(iter(f.keys()))
        tensors[name] = f.get_tensor(name)
    save_file(tensors, first)


def _unlisted(folder):
    edit_index(folder, lambda m: m.pop("model.norm.weight"))


def _outside(folder):
    edit_index(folder, lambda m: m.update({"lm_head.weight": "../elsewhere.safetensors"}))


def _no_index(folder):
    (folder / "model.safetensors.index.json").unlink()


BROKEN = {
    "missing shard": (_missing_shard, "-of-00006.safetensors' is missing"),
    "tensor not in its shard": (_misplaced, "does not hold it"),
    "tensor named twice in the index": (_named_twice_in_json, "'lm_head.weight' twice"),
    "tensor held by two shards": (_held_by_two_shards, "held by two shards"),
    "tensor the index does not list": (_unlisted, "'model.norm.weight', which the index does not list"),
    "shard outside the folder": (_outside, "not a file name inside the folder"),
    "shards without an index": (_no_index, "neither model.safetensors nor model.safetensors.index.json"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_sharded_folder_is_one_line_naming_the_problem(sharded, tmp_path, capsys, name):
    assert len(shard_names(sharded)) == 6
    breaks, words = BROKEN[name]
    breaks(sharded)
    assert main(["convert", "from-hf", str(sharded), str(tmp_path / "out.ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and words in err, err
    assert not (tmp_path / "out.ckpt").exists()


def test_export_and_convert_take_max_shard_size_and_dtype(tmp_path, capsys):
    from llm_modules.checkpoint import save_checkpoint

    module = ours()
    ckpt = save_checkpoint(module, tmp_path / "m.ckpt")
    assert main(["export", str(ckpt), str(tmp_path / "hf"), "--max-shard-size", "40KB", "--dtype", "bfloat16"]) == 0
    assert len(shard_names(tmp_path / "hf")) >= 3
    loaded = llm_modules.from_hf(tmp_path / "hf")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    expected = {k: v.to(torch.bfloat16) for k, v in module.model.state_dict().items()}
    assert bitwise_equal(loaded.model.state_dict(), expected)

    assert main(["convert", "to-hf", str(ckpt), str(tmp_path / "one"), "--max-shard-size", str(10**9)]) == 0
    assert shard_names(tmp_path / "one") == ["model.safetensors"]
    assert main(["convert", "from-hf", str(tmp_path / "hf"), str(tmp_path / "f16.ckpt"), "--dtype", "float16"]) == 0
    from llm_modules.checkpoint_contents import read
    assert {t.dtype for k, t in read(tmp_path / "f16.ckpt", "cpu")["state_dict"].items()} == {torch.float16}
    capsys.readouterr()

    for argv, words in (
        (["export", str(ckpt), str(tmp_path / "bad"), "--max-shard-size", "2XB"], "--max-shard-size: '2XB' is not a size"),
        (["export", str(ckpt), str(tmp_path / "x.ckpt"), "--format", "ckpt", "--dtype", "float16"], "--dtype is for --format hf"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "bad").exists()


# ---- dtype ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float16])
def test_a_half_precision_checkpoint_keeps_its_dtype_or_is_cast_on_request(tmp_path, stored):
    model = tiny_llama(stored)
    model.save_pretrained(tmp_path)
    kept = llm_modules.from_hf(tmp_path)
    assert {p.dtype for p in kept.parameters()} == {stored}
    assert kept.model.stack.position.inv_freq.dtype == torch.float32  # RoPE angles stay fp32, as in transformers
    theirs = {k: v for k, v in model.state_dict().items()}
    assert torch.equal(kept.model.embed.tokens.weight, theirs["model.embed_tokens.weight"])
    assert kept(ids()).dtype == stored

    cast = llm_modules.from_hf(tmp_path, dtype="float32")
    assert {p.dtype for p in cast.parameters()} == {torch.float32}
    assert torch.equal(cast.model.embed.tokens.weight, theirs["model.embed_tokens.weight"].float())
    with pytest.raises(ConfigError, match="dtype: 'float8' is not one of auto, float32, bfloat16, float16"):
        llm_modules.from_hf(tmp_path, dtype="float8")

    # export writes the model's dtype (and says it in config.json), or the one asked for
    llm_modules.to_hf(kept, tmp_path / "kept")
    with safe_open(tmp_path / "kept" / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {stored}
    assert json.loads((tmp_path / "kept" / "config.json").read_text())["torch_dtype"] == str(stored).split(".")[1]
    llm_modules.to_hf(kept, tmp_path / "wide", dtype="float32")
    assert bitwise_equal(llm_modules.from_hf(tmp_path / "wide").model.state_dict(), cast.model.state_dict())


def test_fine_tuning_from_a_bf16_folder_starts_from_fp32_master_weights(tmp_path):
    tiny_llama(torch.bfloat16).save_pretrained(tmp_path)
    module = CausalLM(init_from=str(tmp_path))
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    assert torch.equal(module.model.embed.tokens.weight, llm_modules.from_hf(tmp_path).model.embed.tokens.weight.float())


# ---- meta-device loading --------------------------------------------------------------------------------------


def eager(path: Path) -> torch.nn.Module:
    """What from_hf did before: build the model for real, then copy the weights in."""
    read = read_hf_model(path)
    module = KINDS[read.kind](read.config)
    module.model.load_state_dict(read.state)
    return module.eval()


FAMILIES = {
    "llama, tied head (RoPE)": lambda: tiny_llama(tie_word_embeddings=True),
    "bloom (ALiBi, fused qkv)": lambda: randomize_(transformers.BloomForCausalLM(transformers.BloomConfig(
        vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4))).eval(),
    "gpt2 (Conv1D, learned positions, tied)": lambda: randomize_(transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32))).eval(),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_meta_loading_equals_the_eager_load(tmp_path, family):
    torch.manual_seed(0)
    FAMILIES[family]().save_pretrained(tmp_path)
    loaded, reference = llm_modules.from_hf(tmp_path), eager(tmp_path)
    assert not [n for n, t in [*loaded.named_parameters(), *loaded.named_buffers()] if t.is_meta]
    assert torch.equal(logits_of(loaded, input_ids=ids()), logits_of(reference, input_ids=ids()))
    for (name, buffer), (_, expected) in zip(loaded.named_buffers(), reference.named_buffers(), strict=True):
        assert torch.equal(buffer, expected), name  # inv_freq, ALiBi slopes: computed, not left on meta
    assert loaded.num_parameters() == reference.num_parameters()
    pointers = [p.data_ptr() for p in loaded.parameters()]
    assert len(set(pointers)) == len(pointers), "two parameters share memory"
    llm_modules.to_hf(loaded, tmp_path / "again")  # safetensors refuses tensors that share memory


def test_a_tied_head_stays_tied_and_trains_as_one(tmp_path):
    tiny_llama(tie_word_embeddings=True).save_pretrained(tmp_path)
    loaded = llm_modules.from_hf(tmp_path).train()
    assert loaded.model.head.proj.weight is loaded.model.embed.tokens.weight
    loaded(ids()).float().sum().backward()
    torch.optim.SGD(loaded.parameters(), lr=0.1).step()
    assert loaded.model.head.proj.weight is loaded.model.embed.tokens.weight


def mapped_files() -> dict[str, list[tuple[int, int]]]:
    """Path -> address ranges of this process's file mappings (Linux /proc/self/maps)."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6:
            start, end = (int(x, 16) for x in parts[0].split("-"))
            ranges.setdefault(parts[5], []).append((start, end))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux /proc/self/maps")
def test_loaded_weights_are_the_files_mapped_pages_not_a_copy(tmp_path):
    tiny_llama(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="60KB")
    loaded = llm_modules.from_hf(tmp_path)
    maps = mapped_files()
    shards = [ranges for path, ranges in maps.items() if path.startswith(str(tmp_path.resolve()))]
    assert shards, "no shard of the folder is memory-mapped"
    inside = lambda ptr: any(start <= ptr < end for ranges in shards for start, end in ranges)  # noqa: E731
    copied = [n for n, p in loaded.named_parameters() if not inside(p.data_ptr())]
    assert not copied, f"copied instead of mapped: {copied[:3]}"
    # a cast copies (the fp32 model is new memory), and the folder may then go away
    cast = llm_modules.from_hf(tmp_path, dtype="float32")
    shutil.rmtree(tmp_path)
    assert torch.isfinite(logits_of(cast, input_ids=ids())).all()


def test_meta_building_is_confined_to_its_block_and_thread():
    import threading

    from llm_modules.empty_init import parameters_on_meta

    original = torch.nn.Module.register_parameter
    built = {}
    with parameters_on_meta():
        inside = torch.nn.Linear(4, 4)
        worker = threading.Thread(target=lambda: built.setdefault("other", torch.nn.Linear(4, 4)))
        worker.start()
        worker.join(timeout=30)
    assert inside.weight.is_meta and not built["other"].weight.is_meta
    assert torch.nn.Module.register_parameter is original and not torch.nn.Linear(2, 2).weight.is_meta
