#!/usr/bin/env python3
"""Reference per-choice loglikelihoods for smelt's multiple-choice evals, from transformers.

Independent of smelt: it reads the committed BIG-bench slices, builds the same
zero-shot prompts as assets/evals/tasks.toml ("Q: {input}\\nA:" + " " + choice, choices
sorted by text, gold = highest target score), tokenises pairs as lm-evaluation-harness'
`_encode_pair`, and sums log-softmax of the continuation tokens with one transformers
forward per (context, choice). Command that made evals/tests/fixtures/smollm2_bigbench_reference.json
(from the repo root):

    PY=$(../shared/bench/setup-python.sh)
    GGUF=$(../shared/scripts/fetch-smollm2.sh)
    $PY scripts/eval_reference.py --gguf $GGUF --out evals/tests/fixtures/smollm2_bigbench_reference.json

transformers loads the GGUF (dequantized to f32) as ../shared/bench/reference.py does.
"""
import argparse, json, os, sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared", "bench"))

TASKS = {
    "bigbench_general_knowledge": "assets/evals/bigbench/general_knowledge.json",
    "bigbench_odd_one_out": "assets/evals/bigbench/odd_one_out.json",
}
PROMPT = "Q: {input}\nA:"


def encode_pair(tok, context, continuation):
    n = len(context) - len(context.rstrip(" "))
    if n:
        continuation, context = context[-n:] + continuation, context[:-n]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    return whole[: len(ctx)], whole[len(ctx):]


def argmax(xs):
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    import torch, transformers
    from reference import load
    tok, model = load(a.gguf)
    model.eval()
    out = {"transformers": transformers.__version__, "torch": torch.__version__, "tasks": {}}
    with torch.no_grad():
        for name, path in TASKS.items():
            rows, accs, norms = [], [], []
            for ex in json.load(open(path))["examples"]:
                choices = sorted(ex["target_scores"])
                scores = [ex["target_scores"][c] for c in choices]
                gold = argmax(scores)
                context = PROMPT.replace("{input}", ex["input"])
                lls = []
                for c in choices:
                    ctx, cont = encode_pair(tok, context, " " + c)
                    ids = torch.tensor([ctx + cont])
                    logp = torch.log_softmax(model(ids).logits[0].float(), -1)
                    lls.append(sum(logp[len(ctx) - 1 + k, t].item() for k, t in enumerate(cont)))
                acc = float(argmax(lls) == gold)
                acc_norm = float(argmax([ll / len(c) for ll, c in zip(lls, choices)]) == gold)
                accs.append(acc)
                norms.append(acc_norm)
                rows.append({"choices": choices, "gold": gold, "loglikelihoods": lls, "acc": acc, "acc_norm": acc_norm})
            out["tasks"][name] = {"acc": sum(accs) / len(accs), "acc_norm": sum(norms) / len(norms), "rows": rows}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
    print(json.dumps({"written": a.out, **{k: {"acc": v["acc"], "acc_norm": v["acc_norm"]} for k, v in out["tasks"].items()}}))


if __name__ == "__main__":
    main()
