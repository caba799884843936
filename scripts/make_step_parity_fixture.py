#!/usr/bin/env python3
"""Step-0 loss and gradient norms of SmolLM2-135M-Instruct in PyTorch, for
tests/smollm2_step_parity.rs.

The workload is `reference.py train-step`'s, shrunk so the Rust test stays fast: the
same splitmix64 token stream (`workload_tokens`, seed 1234) at batch 2 × seq 32, the
model loaded by `reference.py`'s `load` (the GGUF dequantized to f32), the loss
transformers computes with `labels=input_ids` (mean next-token cross-entropy over
all B·(T−1) positions), f32, no autocast. Besides the loss it records the L2 norm of
the gradient of a few parameters (HF names). Command that made
tests/fixtures/smollm2/step_parity.json (from the repo root):

    PY=$(../shared/bench/setup-python.sh)
    GGUF=$(../shared/scripts/fetch-smollm2.sh)
    $PY scripts/make_step_parity_fixture.py --gguf $GGUF --out tests/fixtures/smollm2/step_parity.json
"""
import argparse, json, os, sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared", "bench"))

PARAMS = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "model.layers.15.self_attn.v_proj.weight",
    "model.layers.29.mlp.gate_proj.weight",
    "model.layers.29.post_attention_layernorm.weight",
    "model.norm.weight",
]


def main():
    import torch
    from reference import load, workload_tokens

    p = argparse.ArgumentParser()
    p.add_argument("--gguf", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--seed", type=int, default=1234)
    a = p.parse_args()

    torch.manual_seed(0)
    _, model = load(a.gguf)
    model.train()
    ids = workload_tokens(a.batch, a.seq, model.config.vocab_size, a.seed)
    x = torch.tensor(ids)
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    named = dict(model.named_parameters())
    norms = {n: named[n].grad.double().norm().item() for n in PARAMS}
    fixture = {
        "source": "scripts/make_step_parity_fixture.py (transformers, f32)",
        "batch": a.batch,
        "seq": a.seq,
        "seed": a.seed,
        "input_ids": ids,
        "loss": out.loss.item(),
        "grad_norms": norms,
    }
    with open(a.out, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")
    print(json.dumps({"loss": fixture["loss"]}))


if __name__ == "__main__":
    main()
