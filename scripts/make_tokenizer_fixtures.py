#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/smollm2.json: what transformers does with SmolLM2's tokenizer.

Run from the repository root with the reference venv:

    PY=$(/work/shared/bench/setup-python.sh)
    GGUF=$(/work/shared/scripts/fetch-smollm2.sh)
    $PY /work/shared/bench/reference.py export-hf --gguf $GGUF
    $PY scripts/make_tokenizer_fixtures.py --hf-dir ${GGUF%.gguf}.hf

The tokenizer is the one transformers builds when it loads the GGUF
(`AutoTokenizer.from_pretrained(dir, gguf_file=f)`), as saved by `reference.py export-hf`.
`tests/tokenizer_parity.rs` rebuilds it in Rust from the GGUF metadata and checks that it
encodes, decodes and renders chat templates exactly as recorded here.

The other direction (transformers loading what smelt saves) is checked with:

    SMELT_TOKENIZER_SAVE_TO=/tmp/smelt-tok cargo test -p smelt --test tokenizer_parity save_then
    $PY scripts/make_tokenizer_fixtures.py --check-saved /tmp/smelt-tok
"""
import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

TEXTS = [
    "",
    " ",
    "  ",
    "\n",
    "\n\n\n",
    "\t",
    "Hello world",
    "Hello world!",
    " Hello world",
    "Hello  world   with    runs",
    "trailing spaces   ",
    "   leading spaces",
    "The quick brown fox jumps over the lazy dog.",
    "THE QUICK BROWN FOX",
    "I'm sure you'll see they've done it, didn't they? We'd go.",
    "It's JOHN'S car; he'S HERE.",
    "12345678",
    "3.14159265358979",
    "Call 555-0199 or +1 (800) 123-4567 before 2024-12-31.",
    "0x7fffffff 1e-9 1_000_000",
    "café naïve résumé façade Ångström",
    "Straße Größe Übermaß",
    "Ελληνικά κείμενο",
    "Русский текст и ещё немного",
    "日本語のテキストです。",
    "中文文本，包括标点符号。",
    "한국어 텍스트",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "ภาษาไทย",
    "emoji 😀🎉👍🏽 and family 👨‍👩‍👧‍👦",
    "flags 🇫🇷🇯🇵",
    "math ∑∫√∞ ≤ ≥ ≠ → ←",
    "zero\u200bwidth\u200cjoiners\u200d",
    "combining e\u0301 vs \u00e9",
    "nbsp\u00a0here and\u3000ideographic space",
    "def f(x):\n    return x * 2\n",
    "def g():\n\tif True:\n\t\tpass\n",
    "fn main() {\n    println!(\"hi {}\", 1 + 2);\n}\n",
    "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>",
    "SELECT * FROM users WHERE id = 42;",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "path/to/file.rs:12:5: error[E0308]",
    "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct?x=1&y=2",
    "email@example.com",
    "line one\r\nline two\rline three",
    "a\n\nb\n\n\nc",
    "    indented\n        more\n",
    "punctuation!!! ??? ... ,,, ;;; ---",
    "«quotes» „German“ “curly” ‘single’",
    "<|im_start|>user\nHi<|im_end|>\n",
    "text before<|im_end|>text after",
    "<|endoftext|>",
    "<|im_start|><|im_end|>",
    "<|im_start|>",
    " <|im_end|> ",
    "<repo_name>smelt<file_sep>src/lib.rs",
    "<|im_start |> not special",
    "a" * 50,
    "ab" * 30,
    "The year 1999 and 2000; numbers 007 and 100000.",
    "CamelCaseIdentifier snake_case_identifier kebab-case",
    "Mixed 中文 and English 和 emoji 🤖 together.",
    "\u00ff\u00fe bytes-like latin-1",
    "tab\tseparated\tvalues\n1\t2\t3",
]

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road?\nTo get to the other side."},
    ],
    [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Good morning"},
        {"role": "assistant", "content": "Bonjour ! 😀"},
        {"role": "user", "content": "  spaces around  "},
    ],
    [
        {"role": "user", "content": "Write code"},
        {"role": "assistant", "content": "```python\ndef f():\n    return 1\n```"},
    ],
]

# Templates exercising jinja features chat templates use (whitespace control, trim_blocks /
# lstrip_blocks, namespace, loop controls, python string methods, tojson, raise_exception).
# Dict literals list their keys in sorted order: minijinja without its `preserve_order`
# feature iterates template dict literals sorted, jinja2 in insertion order (a known gap).
EXTRA_TEMPLATES = {
    "chatml_blocks": (
        "{% for message in messages %}\n"
        "    {% if message['role'] == 'system' %}\n"
        "<<SYS>>{{ message['content'] | trim }}<</SYS>>\n"
        "    {% else %}\n"
        "<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
        "    {% endif %}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}\n"
        "<|im_start|>assistant\n"
        "{% endif %}\n"
    ),
    "qwen_like": (
        "{%- set ns = namespace(last_user=-1) %}\n"
        "{%- for m in messages %}{% if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}\n"
        "{%- if messages[0].role != 'system' %}{{- bos_token + 'default system\\n' }}{%- endif %}\n"
        "{%- for message in messages %}\n"
        "    {%- if message.role == 'assistant' and loop.index0 < ns.last_user %}\n"
        "        {{- '<|im_start|>assistant\\n' + message.content.strip().split('\\n')[0] + eos_token + '\\n' }}\n"
        "    {%- elif message.role not in ['system', 'user', 'assistant'] %}\n"
        "        {{- raise_exception('bad role ' + message.role) }}\n"
        "    {%- else %}\n"
        "        {{- '<|im_start|>' + message.role + '\\n' + message.content | trim + eos_token + '\\n' }}\n"
        "    {%- endif %}\n"
        "    {%- if loop.index > 20 %}{% break %}{% endif %}\n"
        "{%- endfor %}\n"
        "{{- 'meta: ' + (messages | map(attribute='role') | list | tojson) + ' ' + ({'last': messages[-1].content, 'n': messages|length} | tojson) + '\\n' }}\n"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n"
    ),
}


def ids_of(out):
    """`apply_chat_template(tokenize=True)` returns a list or a BatchEncoding depending on version."""
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    if out and isinstance(out[0], list):
        out = out[0]
    return list(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf-dir", help="folder written by reference.py export-hf")
    ap.add_argument("--out", default="tests/fixtures/tokenizer/smollm2.json")
    ap.add_argument("--check-saved", help="a folder smelt's Tokenizer::save wrote: compare it to --out")
    a = ap.parse_args()
    if a.check_saved:
        return check_saved(a.check_saved, a.out)
    if not a.hf_dir:
        ap.error("--hf-dir is required")

    import tokenizers
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.hf_dir)
    encodings = []
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        ids_special = tok(text, add_special_tokens=True)["input_ids"]
        encodings.append({
            "text": text,
            "ids": ids,
            "ids_add_special": ids_special,
            "decode": tok.decode(ids, skip_special_tokens=False),
            "decode_skip_special": tok.decode(ids, skip_special_tokens=True),
        })

    chats = []
    for conv in CONVERSATIONS:
        for gen in (False, True):
            text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            ids = ids_of(tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=gen))
            assert ids == tok(text, add_special_tokens=False)["input_ids"]
            chats.append({"messages": conv, "add_generation_prompt": gen, "text": text, "ids": ids})

    extra = []
    for name, template in EXTRA_TEMPLATES.items():
        for conv in CONVERSATIONS:
            for gen in (False, True):
                text = tok.apply_chat_template(conv, chat_template=template, tokenize=False,
                                               add_generation_prompt=gen)
                extra.append({"template": name, "messages": conv, "add_generation_prompt": gen, "text": text})

    # Reference assistant mask: SmolLM2's template (its string literals hold real newlines) with the assistant content and its <|im_end|>
    # wrapped in {% generation %}, which renders the same text; transformers then reports the
    # assistant tokens itself (return_assistant_tokens_mask), independently of smelt's rule.
    gen_template = tok.chat_template.replace(
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}",
        "{% if message['role'] == 'assistant' %}{{'<|im_start|>' + message['role'] + '\n'}}"
        "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
        "{% else %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}",
    )
    assert gen_template != tok.chat_template, "SmolLM2 template changed; update the generation rewrite"
    masks = []
    for conv in CONVERSATIONS:
        if not any(m["role"] == "assistant" for m in conv):
            continue
        plain = tok.apply_chat_template(conv, tokenize=False)
        assert tok.apply_chat_template(conv, chat_template=gen_template, tokenize=False) == plain
        out = tok.apply_chat_template(conv, chat_template=gen_template, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        ids, mask = ids_of(out), out["assistant_masks"]
        if mask and isinstance(mask[0], list):
            mask = mask[0]
        masks.append({"messages": conv, "ids": ids, "assistant_mask": list(mask)})

    fixture = {
        "generator": "scripts/make_tokenizer_fixtures.py",
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "vocab_size": len(tok),
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "pad_token": tok.pad_token,
        "unk_token": tok.unk_token,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "chat_template": tok.chat_template,
        "encodings": encodings,
        "chats": chats,
        "extra_templates": EXTRA_TEMPLATES,
        "extra_renders": extra,
        "assistant_masks": masks,
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(json.dumps({"written": a.out, "texts": len(encodings), "chats": len(chats),
                      "extra_renders": len(extra), "masks": len(masks)}))


def check_saved(saved_dir, fixture_path):
    """Loads smelt's saved tokenizer with transformers and compares it with the fixture."""
    from transformers import AutoTokenizer

    with open(fixture_path, encoding="utf-8") as f:
        fixture = json.load(f)
    tok = AutoTokenizer.from_pretrained(saved_dir)
    bad = []
    for e in fixture["encodings"]:
        if tok(e["text"], add_special_tokens=False)["input_ids"] != e["ids"]:
            bad.append(("ids", e["text"]))
        if tok(e["text"], add_special_tokens=True)["input_ids"] != e["ids_add_special"]:
            bad.append(("ids_add_special", e["text"]))
        if tok.decode(e["ids"], skip_special_tokens=False) != e["decode"]:
            bad.append(("decode", e["text"]))
        if tok.decode(e["ids"], skip_special_tokens=True) != e["decode_skip_special"]:
            bad.append(("decode_skip_special", e["text"]))
    for c in fixture["chats"]:
        text = tok.apply_chat_template(c["messages"], tokenize=False, add_generation_prompt=c["add_generation_prompt"])
        if text != c["text"]:
            bad.append(("chat", c["messages"]))
    for key in ("bos_token", "eos_token", "pad_token", "unk_token", "bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tok, key) != fixture[key]:
            bad.append((key, getattr(tok, key)))
    if len(tok) != fixture["vocab_size"]:
        bad.append(("vocab_size", len(tok)))
    print(json.dumps({"checked": saved_dir, "class": type(tok).__name__, "mismatches": bad[:20], "n_bad": len(bad)}))
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
