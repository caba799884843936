#!/usr/bin/env python3
"""Reference fixtures for the real SmolLM2-135M-Instruct, from transformers.

Commands that made the committed fixtures under tests/fixtures/smollm2/ (from the repo root):

    PY=$(../shared/bench/setup-python.sh)
    GGUF=$(../shared/scripts/fetch-smollm2.sh)
    # logits.json: top-20 logits, logsumexp and next-token logprobs for 6 texts
    $PY ../shared/bench/reference.py logits --gguf $GGUF --topk 20 --out tests/fixtures/smollm2/logits.json \
        --text ... (the six texts listed in tests/fixtures/smollm2/README.md)
    # generate.json: greedy chat generations (this script)
    $PY scripts/make_smollm2_fixtures.py --gguf $GGUF --out tests/fixtures/smollm2/generate.json

transformers loads the GGUF (dequantized to f32) exactly as ../shared/bench/reference.py does.
"""
import argparse, json, os, sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared", "bench"))

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "What is 12 plus 15?",
]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--new-tokens", type=int, default=16)
    a = p.parse_args()
    import torch, transformers
    from reference import load
    tok, model = load(a.gguf)
    model.eval()
    rows = []
    with torch.no_grad():
        for prompt in PROMPTS:
            msgs = [{"role": "user", "content": prompt}]
            text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.new_tokens,
                                 do_sample=False, pad_token_id=tok.eos_token_id)
            new = out[0, ids.shape[1]:].tolist()
            rows.append({"prompt": prompt, "chat_text": text, "prompt_ids": ids[0].tolist(),
                         "new_ids": new, "new_text": tok.decode(new, skip_special_tokens=False)})
    res = {"transformers": transformers.__version__, "torch": torch.__version__,
           "new_tokens": a.new_tokens, "greedy": True, "rows": rows}
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1, ensure_ascii=False)
    print(json.dumps({"written": a.out, "rows": len(rows)}))


if __name__ == "__main__":
    main()
