#!/usr/bin/env python3
"""Writes tests/fixtures/tiny_models/logits.json: transformers' logits for smelt's tiny models.

Run from the repository root with the reference venv:

    PY=$(../shared/bench/setup-python.sh)
    SMELT_TINY_EXPORT_DIR=/tmp/tiny cargo test -p smelt --test tiny_transformers_parity -- --ignored export_tiny_models
    $PY scripts/tiny_models_transformers.py /tmp/tiny tests/fixtures/tiny_models/logits.json

The first command saves every tiny model of `tests/tiny_transformers_parity.rs` with smelt's
`save_pretrained` into `/tmp/tiny/<name>/`. This script loads each folder with
`AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32)` -- failing on any missing,
unexpected or mismatched tensor, so it is also the check that transformers loads what smelt
saves -- and runs it in eval mode with eager attention on:

- a batch of 2 rows x 12 fixed token ids (one document per row): the full logits are
  recorded, rounded to 1e-6 absolute;
- one packed row holding two documents (prefixes of the two rows) with `position_ids`
  restarting at the second. The defined semantics of a packed row is "each document run on
  its own, logits concatenated"; the script checks that transformers' own packed call
  (`position_ids` without `attention_mask`, which transformers turns into a per-document
  causal mask) and the documents run one by one both agree with the prefixes of the batch
  logits, and records only the layout, so the Rust test compares smelt's packed call against
  slices of the batch logits.

`cargo test -p smelt --test tiny_transformers_parity` then compares smelt's logits with these.
"""
import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

transformers.utils.logging.disable_progress_bar()

# Must list the same names, in the same order, as `cases()` in tests/tiny_transformers_parity.rs.
MODELS = ["llama", "llama_untied_bias_llama3rope", "smollm3_nope", "qwen2", "qwen3"]

# Fixed token ids (vocab 300): they include 0 and 299, the ends of the vocabulary.
INPUT_IDS = [
    [1, 17, 299, 42, 0, 123, 256, 7, 88, 199, 3, 150],
    [1, 250, 9, 64, 131, 0, 299, 45, 12, 270, 101, 33],
]
# The packed row: documents given as (row of INPUT_IDS, prefix length).
PACKED_DOCS = [(0, 5), (1, 7)]
# transformers' packed call and the documents run alone must agree this closely.
SELF_CHECK_TOL = 1e-5

CONFIG_KEYS = [
    "model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size",
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "hidden_act", "rms_norm_eps", "rope_parameters", "tie_word_embeddings",
    "attention_bias", "mlp_bias", "no_rope_layers", "use_sliding_window",
    "bos_token_id", "eos_token_id", "pad_token_id",
]


def load(folder):
    model, info = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v}
    if bad:
        sys.exit(f"{folder}: transformers did not load the folder cleanly: {bad}")
    model.eval()
    params = dict(model.named_parameters())
    for name, p in params.items():
        if name.endswith("norm.weight") and torch.all(p == 1):
            sys.exit(f"{folder}: {name} is all ones: the norm is not exercised")
        if name.endswith(".bias") and torch.all(p == 0):
            sys.exit(f"{folder}: {name} is all zeros: the bias is not exercised")
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), folder
    return model, params


@torch.no_grad()
def logits(model, ids, position_ids=None):
    ids = torch.tensor(ids, dtype=torch.long)
    kwargs = {}
    if position_ids is not None:
        kwargs["position_ids"] = torch.tensor(position_ids, dtype=torch.long)
    return model(input_ids=ids, use_cache=False, **kwargs).logits.float()


def run(name, folder):
    model, params = load(folder)
    batch = logits(model, INPUT_IDS)  # (2, 12, V)

    packed_ids = [sum((INPUT_IDS[r][:n] for r, n in PACKED_DOCS), [])]
    packed_pos = [sum((list(range(n)) for _, n in PACKED_DOCS), [])]
    packed = logits(model, packed_ids, packed_pos)[0]
    separate = torch.cat([logits(model, [INPUT_IDS[r][:n]])[0] for r, n in PACKED_DOCS])
    prefixes = torch.cat([batch[r, :n] for r, n in PACKED_DOCS])
    packed_vs_separate = (packed - separate).abs().max().item()
    separate_vs_prefixes = (separate - prefixes).abs().max().item()
    if packed_vs_separate > SELF_CHECK_TOL or separate_vs_prefixes > SELF_CHECK_TOL:
        sys.exit(
            f"{name}: transformers disagrees with itself: packed vs separate {packed_vs_separate:.3e}, "
            f"separate vs batch prefixes {separate_vs_prefixes:.3e}"
        )

    sum_, sum_sq = 0.0, 0.0
    for p in params.values():
        p = p.detach().double()
        sum_ += p.sum().item()
        sum_sq += (p * p).sum().item()

    cfg = model.config.to_dict()
    config = {k: cfg[k] for k in CONFIG_KEYS if k in cfg}
    config["transformers_class"] = f"{type(model).__name__} ({type(model.config).__name__})"
    print(
        f"{name:30} {type(model).__name__:22} |logits| max {batch.abs().max().item():.3f}  "
        f"packed vs separate {packed_vs_separate:.2e}  separate vs prefixes {separate_vs_prefixes:.2e}"
    )
    return {
        "name": name,
        "config": config,
        "param_sum": sum_,
        "param_sum_sq": sum_sq,
        "packed_vs_separate_max_abs": packed_vs_separate,
        "input_ids": INPUT_IDS,
        "logits": [[[round(x, 6) for x in tok] for tok in row] for row in batch.tolist()],
    }, (packed_ids, packed_pos)


def dump(value, indent=0):
    """JSON with every list of scalars on one line (one logits vector per line)."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(k)}: {dump(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and any(isinstance(v, (list, dict)) for v in value):
        return "[\n" + ",\n".join(inner + dump(v, indent + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value, separators=(",", ":"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export_dir", help="folder written by the export_tiny_models test")
    ap.add_argument("out", help="fixture to write (tests/fixtures/tiny_models/logits.json)")
    args = ap.parse_args()

    torch.manual_seed(0)
    found = sorted(d for d in os.listdir(args.export_dir) if os.path.isdir(os.path.join(args.export_dir, d)))
    if sorted(MODELS) != found:
        sys.exit(f"{args.export_dir} holds {found}, expected {sorted(MODELS)}: update MODELS or re-export")
    models, packed = [], None
    for name in MODELS:
        record, packed = run(name, os.path.join(args.export_dir, name))
        models.append(record)
    out = {
        "about": "transformers logits for the tiny models of tests/tiny_transformers_parity.rs; "
        "written by scripts/tiny_models_transformers.py (see its header)",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "attn_implementation": "eager",
        "logits_rounding": "round(x, 6)",
        "packed": {
            "note": "one row, documents = (row, prefix length) of input_ids; reference = the "
            "documents run separately and concatenated, i.e. the prefixes of the batch logits",
            "documents": [list(d) for d in PACKED_DOCS],
            "input_ids": packed[0],
            "position_ids": packed[1],
        },
        "models": models,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(dump(out) + "\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
