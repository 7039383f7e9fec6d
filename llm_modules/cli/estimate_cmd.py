"""``llm-modules estimate``: plan a run from a config or a preset before paying for it.

    llm-modules estimate --preset llama-7b --seq-len 2048 --batch-size 4 --precision bf16-mixed \\
        --strategy zero3 --devices 64 --tokens 1e12 --gpu h100-sxm --mfu 0.4

Parameters, FLOPs, memory per device (with the peak under every strategy and precision),
Chinchilla/Kaplan figures and wall time, as a table, or as JSON with ``--format json`` (stdout)
and/or ``--json FILE`` (written to a temporary name first, so a failed run leaves FILE as it was).

``--config`` takes a ModelConfig YAML or a ``llm-modules fit`` config; from a fit config the model
(``model.init_args.config``, a preset name or a file), its kind (``model.class_path``), LoRA
(``model.init_args.peft``), activation checkpointing, the sequence length and batch size
(``data.init_args``), precision, devices x nodes and strategy (``trainer``) become the defaults
that the flags override.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from llm_modules.atomic_files import write_text
from llm_modules.cli import estimate_pp, fast_exit, outputs
from llm_modules.registry import ConfigError, did_you_mean

GB = 1e9


def _count(text: str) -> float:
    """``1e12``, ``1.4T``, ``300B``, ``5_000_000`` -> a number (argparse type for big counts)."""
    units = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
    value = text.strip().replace("_", "").replace(",", "")
    scale = units.get(value[-1:].lower(), 1.0) if value and value[-1].isalpha() else 1.0
    try:
        number = float(value[:-1] if scale != 1.0 else value) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 1e12, 1.4T or 300B; got {text!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be positive; got {text!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    from llm_modules.estimate.memory import PRECISIONS, STRATEGIES
    from llm_modules.kinds import KINDS

    parser = argparse.ArgumentParser(
        prog="llm-modules estimate",
        description="Parameters, FLOPs, memory per device, scaling-law figures and wall time of a training run.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", metavar="NAME", help="a shipped model preset (llama-7b, gpt2, ...)")
    source.add_argument("--config", metavar="PATH", action="append",
                        help="a ModelConfig YAML or an 'llm-modules fit' config (repeat to layer fit configs)")
    parser.add_argument("--kind", choices=tuple(KINDS), default=None,
                        help="LM kind (default: the fit config's class, the preset's 'Use with', else causal)")
    parser.add_argument("--seq-len", type=int, default=None, metavar="T",
                        help="tokens per row (seq2seq: encoder tokens; default: the data config's, else max_seq_len)")
    parser.add_argument("--decoder-len", type=int, default=None, metavar="T",
                        help="seq2seq only: decoder tokens per row (default: --seq-len)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="B",
                        help="rows per device per micro-batch (default: the data config's, else 1)")
    parser.add_argument("--accumulate", type=int, default=None, metavar="N",
                        help="micro-batches per optimizer step (trainer.accumulate_grad_batches; default 1)")
    parser.add_argument("--tokens", type=_count, default=None, metavar="D",
                        help="tokens of the whole run, e.g. 1e12 or 300B (default: 20 per parameter, Chinchilla)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="Lightning precision flag (default: the fit config's, else 32-true)")
    parser.add_argument("--strategy", choices=STRATEGIES, default=None,
                        help="ddp; DeepSpeed ZeRO stage 1/2/3 (zero1..3); fsdp (FULL_SHARD) (default: ddp)")
    parser.add_argument("--devices", type=int, default=None, metavar="N",
                        help="data-parallel size: devices x nodes (default: the fit config's, else 1)")
    checkpointing = parser.add_mutually_exclusive_group()
    checkpointing.add_argument("--activation-checkpointing", dest="checkpointing", action="store_true", default=None,
                               help="recompute every block in the backward pass (keep only block inputs)")
    checkpointing.add_argument("--no-activation-checkpointing", dest="checkpointing", action="store_false",
                               help="keep all activations (overrides a fit config that checkpoints)")
    parser.add_argument("--lora-rank", type=int, default=None, metavar="R",
                        help="train LoRA of rank R on a frozen model (default: the fit config's peft, else none)")
    parser.add_argument("--lora-targets", default=None, metavar="PATTERNS",
                        help="comma-separated linear-layer patterns for LoRA (default: '*.q,*.v')")
    parser.add_argument("--gpu", default="h100-sxm", metavar="NAME",
                        help="GPU for the wall time and the default device (default: h100-sxm); e.g. a100, h200, l40s")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization to plan with (default: 0.4)")
    parser.add_argument("--flop-budget", type=_count, default=None, metavar="C",
                        help="FLOPs for the compute-optimal sizes (default: this run's training FLOPs)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="where the step runs, for the details that differ (dropout, optimizer temporaries)")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="what to print (default: table)")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the JSON report to FILE")
    outputs.add_flag(parser, "the --json file")
    estimate_pp.add_arguments(parser)
    return parser


# ---- reading the config -----------------------------------------------------------------------------------


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


def _read_yaml(path: str) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"--config {path!r}: {err.strerror}; give the path of a YAML file") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path!r} is not valid YAML: {err}") from err


def _strategy(value: Any) -> tuple[str | None, bool | None]:
    """(our strategy name, activation checkpointing it implies) of a trainer.strategy value."""
    if value is None:
        return None, None
    if isinstance(value, str):
        name = value.lower()
        if name.startswith("deepspeed_stage_"):
            return f"zero{name[len('deepspeed_stage_')][0]}", None
        if name.startswith("fsdp"):
            return "fsdp", None
        return ("ddp", None) if name.startswith(("ddp", "auto", "single")) else (None, None)
    if isinstance(value, dict):
        cls = str(value.get("class_path", "")).rsplit(".", 1)[-1]
        args = value.get("init_args") or {}
        if cls == "DeepSpeedStrategy":
            stage = args.get("stage") or ((args.get("config") or {}).get("zero_optimization") or {}).get("stage", 2)
            return f"zero{stage}", None
        if "FSDP" in cls:
            sharding = str(args.get("sharding_strategy", "FULL_SHARD")).upper()
            name = {"NO_SHARD": "ddp", "SHARD_GRAD_OP": "zero2"}.get(sharding, "fsdp")
            default_checkpointing = True if cls == "BlockFSDPStrategy" else None
            return name, args.get("activation_checkpointing", default_checkpointing)
        if cls.startswith("DDP"):
            return "ddp", None
    return None, None


def _model_config(value: Any, where: Path):
    from llm_modules.config import ModelConfig, preset_names

    if isinstance(value, str):
        if value in preset_names():
            return ModelConfig.from_preset(value)
        path = Path(value) if Path(value).is_absolute() or Path(value).exists() else where / value
        return ModelConfig.from_file(path)
    if isinstance(value, dict):
        return ModelConfig.from_dict(value)
    raise ConfigError("model.init_args.config must be a mapping of ModelConfig fields, a preset name or a YAML path")


def load(args) -> tuple[Any, str, dict, str]:
    """(ModelConfig, kind, defaults from a fit config, source label) for ``--preset`` / ``--config``."""
    from llm_modules.config import ModelConfig, preset_dir
    from llm_modules.estimate.params import kind_of_class, preset_kind

    if args.preset is not None:
        cfg = ModelConfig.from_preset(args.preset)  # an unknown name fails here, listing the presets
        kind = preset_kind(preset_dir().joinpath(f"{args.preset}.yaml").read_text())
        return cfg, kind, {}, f"preset {args.preset}"
    data: dict = {}
    for path in args.config:
        loaded = _read_yaml(path)
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {path!r} holds no mapping; give a ModelConfig or 'llm-modules fit' YAML")
        data = _merge(data, loaded)
    source = f"config {', '.join(args.config)}"
    if "model" not in data:  # a ModelConfig file
        fields = data["config"] if set(data) == {"config"} else data
        return ModelConfig.from_dict(fields), "causal", {}, source
    model = data["model"] if isinstance(data["model"], dict) else {}
    init = model.get("init_args", model)
    if init.get("config") is None:
        fix = " (it fine-tunes from init_from)" if init.get("init_from") else ""
        raise ConfigError(f"--config has no model.init_args.config{fix}; give the architecture with --preset NAME "
                          "or a ModelConfig YAML")
    cfg = _model_config(init["config"], Path(args.config[-1]).parent)
    kind = kind_of_class(model.get("class_path", "CausalLM")) or "causal"
    defaults: dict[str, Any] = {}
    memory = init.get("memory") or {}
    if memory.get("activation_checkpointing"):
        defaults["checkpointing"] = True
    peft = init.get("peft")
    if isinstance(peft, str) and peft == "lora":
        defaults["lora_rank"] = 8
    elif isinstance(peft, dict) and peft.get("name") == "lora":
        defaults["lora_rank"] = int(peft.get("r", 8))
        if peft.get("targets"):
            targets = peft["targets"]
            defaults["lora_targets"] = ",".join([targets] if isinstance(targets, str) else targets)
    data_args = (data.get("data") or {}).get("init_args") or data.get("data") or {}
    for key in ("seq_len", "batch_size"):
        if isinstance(data_args.get(key), int):
            defaults[key] = data_args[key]
    trainer = data.get("trainer") or {}
    if trainer.get("precision") is not None:
        defaults["precision"] = str(trainer["precision"])
    if isinstance(trainer.get("accumulate_grad_batches"), int):
        defaults["accumulate"] = trainer["accumulate_grad_batches"]
    devices = trainer.get("devices")
    if isinstance(devices, int) and devices > 0:
        defaults["devices"] = devices * int(trainer.get("num_nodes") or 1)
    pipeline = estimate_pp.fit_defaults(trainer.get("strategy"), defaults.get("devices"),
                                        int(trainer.get("num_nodes") or 1))
    if pipeline:  # the pipeline or tensor-parallel strategy: replicas shard with FSDP2; devices is their number
        defaults.update(pipeline, strategy="fsdp")
    strategy, checkpointing = _strategy(trainer.get("strategy")) if not pipeline else (None, None)
    if strategy:
        defaults["strategy"] = strategy
    if checkpointing:
        defaults["checkpointing"] = True
    return cfg, kind, defaults, source


def resolve(args) -> dict:
    """The report of ``plan`` for the parsed arguments."""
    from llm_modules.estimate.lora import DEFAULT_TARGETS
    from llm_modules.estimate.memory import PRECISIONS, Setup, check_choice
    from llm_modules.estimate.report import plan

    cfg, kind, defaults, source = load(args)
    kind = args.kind or kind

    def pick(name: str, fallback: Any) -> Any:
        value = getattr(args, name)
        return value if value is not None else defaults.get(name, fallback)

    precision = check_choice(pick("precision", "32-true"), PRECISIONS, "trainer.precision")
    targets = pick("lora_targets", ",".join(DEFAULT_TARGETS))
    pipeline = estimate_pp.pipeline_of(args, defaults) if estimate_pp.pipelined(args, defaults) else None
    # a pipeline's replicas shard with FSDP2 (an explicit other --strategy is refused by estimate.pipeline)
    strategy = (args.strategy or "fsdp") if pipeline is not None else pick("strategy", "ddp")
    setup = Setup(
        precision=precision, strategy=strategy, devices=pick("devices", 1),
        batch_size=pick("batch_size", 1), seq_len=pick("seq_len", cfg.max_seq_len),
        decoder_len=args.decoder_len, activation_checkpointing=bool(pick("checkpointing", False)), device=args.device,
        accumulate=pick("accumulate", 1),
    )
    if args.decoder_len is not None and kind != "seq2seq":
        raise ConfigError(f"--decoder-len is for encoder-decoder models (--kind seq2seq); this is a {kind} model")
    report = plan(
        cfg, kind=kind, setup=setup, tokens=args.tokens, lora_rank=pick("lora_rank", 0) or 0,
        lora_targets=[t for t in targets.split(",") if t.strip()], gpu=args.gpu, mfu=args.mfu,
        flop_budget=args.flop_budget, source=source, pipeline=pipeline,
    )
    if args.cluster is not None:
        report["layouts"] = estimate_pp.layouts(args, cfg, kind, setup, report)
    return report


# ---- printing ---------------------------------------------------------------------------------------------


def _n(value: float) -> str:
    """Counts and FLOPs: 6.74e9 -> '6.74 B', 3.1e23 -> '3.10e23'."""
    for limit, suffix in ((1e12, " T"), (1e9, " B"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= limit and abs(value) < 1e15:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}" if abs(value) < 1e15 else f"{value:.3e}"


def _gb(value: float) -> str:
    """Bytes in GB (1e9), or in MB below a gigabyte, so small models do not read as 0.00."""
    if abs(value) >= GB or value == 0:
        return f"{value / GB:,.2f} GB"
    return f"{value / 1e6:,.1f} MB"


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.1f} minutes"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86400:.1f} days"


PHASES = {"forward": "at the end of the forward", "backward": "at the start of the backward",
          "recompute": "while recomputing a block", "optimizer": "in the optimizer step"}


def format_table(report: dict) -> str:
    s, p, f = (report[k] for k in ("setup", "parameters", "flops"))
    lora = f", LoRA r={s['lora_rank']} on {', '.join(s['lora_targets'])}" if s["lora_rank"] else ""
    ckpt = ", activation checkpointing" if s["activation_checkpointing"] else ""
    lines = [
        f"{report['model']['source']} ({report['model']['kind']})",
        (f"run: {s['batch_size']} x {s['seq_len']} tokens per device, {s['devices']} device(s), {s['precision']}, "
         f"{s['strategy']}{ckpt}{lora}") if "pipeline" not in report else
        (f"run: {s['batch_size']} x {s['seq_len']} tokens per replica and step, {s['devices']} replica(s), "
         f"{s['precision']}"),
        "",
        "parameters",
        f"  total              {_n(p['total']):>10}   ({p['total']:,})",
        f"  embedding          {_n(p['embedding']):>10}   (lookup tables: tokens, positions)",
        f"  non-embedding      {_n(p['non_embedding']):>10}",
    ]
    if p["lora"]:
        lines.append(f"  trainable (LoRA)   {_n(p['lora']):>10}")
    tokens_note = " (20 per parameter, Chinchilla)" if s["tokens_default"] else ""
    lines += [
        "",
        "compute",
        (f"  FLOPs per token    {f['per_token']:>10.3g}   (6N {f['dense_per_token']:.3g} + attention "
         f"{f['attention_per_token']:.3g})"),
        f"  training tokens    {f['tokens']:>10.3g}{tokens_note}",
        f"  training FLOPs     {f['total']:>10.3g}   (6ND with all parameters: {f['six_nd']:.3g})",
    ]
    if s["activation_checkpointing"]:
        lines.append(f"  hardware FLOPs     {f['hardware_total']:>10.3g}   (with the recomputed forward)")
    if "pipeline" in report:
        lines += estimate_pp.pipeline_lines(report)
    else:
        lines += _memory_lines(report)
    lines += _scaling_lines(report)
    if "layouts" in report:
        lines += estimate_pp.layout_lines(report["layouts"])
    return "\n".join(lines) + "\n"


def _memory_lines(report: dict) -> list[str]:
    s, m = report["setup"], report["memory"]
    lora = f", LoRA r={s['lora_rank']} on {', '.join(s['lora_targets'])}" if s["lora_rank"] else ""
    ckpt = ", activation checkpointing" if s["activation_checkpointing"] else ""
    master = ", fp32 master weights" if s["strategy"].startswith("zero") and s["precision"] != "32-true" else ""
    lines = [
        "",
        "memory per device (GB = 1e9 bytes, MB = 1e6)",
        f"  weights            {_gb(m['weights']):>13}",
        f"  gradients          {_gb(m['gradients']):>13}",
        f"  optimizer states   {_gb(m['optimizer']):>13}   (AdamW moments{master})",
    ]
    if m["compute_copies"]:
        lines.append(f"  autocast copies    {_gb(m['compute_copies']):>13}   (half-precision linear weights)")
    if m["gathered"]:
        lines.append(f"  gathered weights   {_gb(m['gathered']):>13}   (unsharded units while they run)")
    if m["buffers"]:
        lines.append(f"  comm. buffers      {_gb(m['buffers']):>13}   (gradient buckets)")
    approx = " (approximate: see the notes)" if m["activation_detail"]["approximate"] else ""
    lines += [
        f"  activations        {_gb(m['activations']):>13}{approx}",
        f"  peak               {_gb(m['peak']):>13}   ({PHASES[m['peak_phase']]})",
        *(f"  note: {note}" for note in m["activation_detail"]["notes"]),
        "",
        f"peak per device by strategy and precision, {s['devices']} device(s){ckpt}{lora}",
    ]
    matrix = report["memory_peak_by_strategy"]
    precisions = list(next(iter(matrix.values())))
    lines.append("  " + " " * 8 + "".join(f"{name:>13}" for name in precisions))
    for strategy, row in matrix.items():
        lines.append(f"  {strategy:<8}" + "".join(f"{_gb(row[name]):>13}" for name in precisions))
    return lines


def _scaling_lines(report: dict) -> list[str]:
    sc, t = report["scaling"], report["time"]
    loss, rule, fit, kaplan = sc["loss"], sc["chinchilla_rule"], sc["chinchilla_fit"], sc["kaplan"]
    bubble = f", x{1 / (1 - t['bubble']):.3f} for the pipeline bubble" if "bubble" in t else ""
    return [
        "",
        f"scaling laws (budget {sc['flop_budget']:.3g} FLOPs)",
        f"  Chinchilla, 20 tokens/param   {_n(rule['parameters']):>8} parameters, {_n(rule['tokens']):>8} tokens",
        f"  Chinchilla, fitted law        {_n(fit['parameters']):>8} parameters, {_n(fit['tokens']):>8} tokens",
        f"  Kaplan et al.                 {_n(kaplan['parameters']):>8} parameters, {_n(kaplan['tokens']):>8} tokens",
        (f"  predicted loss of this run    Chinchilla {loss['chinchilla']:.3f}, Kaplan {loss['kaplan']:.3f} "
         "nats/token (on their data)"),
        "",
        (f"wall time: {_duration(t['seconds'])} on {t['devices']} x {t['gpu']} at MFU {t['mfu']:.2f} "
         f"({t['peak_flops'] / 1e12:,.0f} TFLOP/s {t['mode']} dense each{bubble})"),
    ]


def write_json(report: dict, path: str, overwrite: bool = False) -> Path:
    """Write ``report`` to ``path`` through a temporary file in the same folder, then rename; an
    existing file only with ``overwrite``."""
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"--json {path!r} is a folder; give a file name such as {str(target / 'estimate.json')!r}")
    outputs.check_file(target, "--json", overwrite)
    if not target.parent.exists():
        raise ConfigError(f"--json {path!r}: folder {str(target.parent)!r} does not exist; create it first")
    return write_text(target, json.dumps(report, indent=2) + "\n")  # 0644 under umask 022, not mkstemp's 0600


def check_gpu(name: str) -> str:
    """``--gpu NAME`` (returned as the table spells it) must name a row of the peak-FLOPs table as a whole word: the table matches
    device names by substring (``h100`` in "NVIDIA H100 80GB HBM3"), so without this ``h1000``
    would silently plan on an H100."""
    import re

    from llm_modules.training.model_flops import PEAKS

    text = re.sub(r"[-_\s]+", " ", name.lower()).strip()
    for pattern, _ in PEAKS:
        found = re.search(pattern, text)
        if found and not text[found.end():found.end() + 1].isalnum() and not text[max(found.start() - 1, 0):
                                                                                  found.start()].isalnum():
            return text  # the table's spelling: "rtx-4090" -> "rtx 4090"
    names = [peak.name for _, peak in PEAKS]
    slugs = [n.lower().replace(" ", "-") for n in names]  # h100-sxm; and the family alone: h100
    hint = did_you_mean(name.lower(), dict.fromkeys([s.split("-")[0] for s in slugs] + slugs))
    raise ConfigError(f"--gpu {name!r} is not in the peak-FLOPs table{hint}; choose one of {', '.join(names)} "
                      "(any case; dashes for spaces)")


def run(argv: list[str]) -> int:
    fast_exit.freeze_at_exit()  # the interpreter's teardown would be a quarter of the command's time
    args = build_parser().parse_args(argv)
    args.gpu = check_gpu(args.gpu)
    if args.json:  # before any work: a refusal leaves the file as it is
        outputs.check_file(args.json, "--json", args.overwrite)
    report = resolve(args)
    if args.json:
        write_json(report, args.json, args.overwrite)
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report), end="")
    return 0
