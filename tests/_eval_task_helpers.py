"""Two tiny lm-eval tasks written by the tests themselves (local JSONL data, nothing downloaded): a
multiple-choice task scored by log-likelihood and a generative task scored by exact match."""

from __future__ import annotations

import json
from pathlib import Path

MC_TASK = "tiny_mc"
GEN_TASK = "tiny_gen"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_tasks(root: Path) -> dict[str, Path]:
    """``{"mc": YAML, "gen": YAML, "hub": YAML needing a download, "notask": YAML without a task,
    "unsafe": a generative task marked as running model-written code}`` under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    mc = _jsonl(root / "mc.jsonl", [{"q": f"x = {a} + {b}", "choices": [str(a + b), str(a * b + 7), "None"],
                                     "label": 0} for a in range(1, 5) for b in range(1, 3)])
    gen = _jsonl(root / "gen.jsonl", [{"q": f"print({a})", "a": str(a)} for a in range(8)])
    (root / "mc.yaml").write_text(f"""task: {MC_TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    train: {mc}
    test: {mc}
training_split: train
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    (root / "gen.yaml").write_text(f"""task: {GEN_TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    train: {gen}
    test: {gen}
training_split: train
test_split: test
output_type: generate_until
doc_to_text: "{{{{q}}}} # prints"
doc_to_target: "{{{{a}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""")
    (root / "hub.yaml").write_text("""task: needs_the_hub
dataset_path: llm-modules-tests/no-such-dataset
test_split: test
output_type: multiple_choice
doc_to_text: "{{q}}"
doc_to_choice: "{{choices}}"
doc_to_target: 0
""")
    (root / "notask.yaml").write_text("dataset_path: json\noutput_type: multiple_choice\n")
    unsafe = (root / "gen.yaml").read_text().replace(f"task: {GEN_TASK}", "task: tiny_unsafe")
    (root / "unsafe.yaml").write_text(unsafe + "unsafe_code: true\n")
    return {name: root / f"{name}.yaml" for name in ("mc", "gen", "hub", "notask", "unsafe")}
