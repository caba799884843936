#!/usr/bin/env python3
"""Writes assets/evals/arithmetic.jsonl: the fixed arithmetic slice of the built-in
`arithmetic` eval task (generative exact match), until rollouts' task generator is
used instead. Deterministic (seed 7).

    python3 scripts/make_arithmetic_slice.py > assets/evals/arithmetic.jsonl
"""
import json, random

rng = random.Random(7)
OPS = [("plus", lambda a, b: a + b), ("minus", lambda a, b: a - b), ("times", lambda a, b: a * b)]
for i in range(40):
    name, f = OPS[i % 3]
    a, b = rng.randint(2, 50), rng.randint(2, 50)
    if name == "times":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
    print(json.dumps({"id": f"arith-{i}", "input": f"What is {a} {name} {b}?", "answer": str(f(a, b))}))
