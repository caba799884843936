#!/usr/bin/env python3
"""Writes tests/fixtures/optim/adamw.json and schedules.json: what PyTorch and transformers do.

Run from the repository root with the reference venv:

    PY=$(../shared/bench/setup-python.sh)
    $PY scripts/make_optim_fixtures.py

adamw.json: torch.optim.AdamW (betas 0.9/0.95, eps 1e-8; weight decay 0.1 on two
projection weights and 0 on a norm weight, via param groups) run for 5 steps on small
deterministic f32 tensors with given gradients, clip_grad_norm_(max_norm=1.0) before each
step (it only scales when the norm exceeds 1.0) and a learning rate per step from a cosine
schedule. Records the initial parameters, each step's gradients, learning rate, pre-clip
norm and the parameters after the step. `tests/optim_golden.rs` replays it with smelt's
AdamW and clip_grad_norm and matches every parameter to 1e-6.

schedules.json: transformers' schedule lambdas (lr multipliers) for steps 0..=total of
several schedules, each beside the smelt `Schedule` (as JSON) that should reproduce it.
smelt counts the step being taken during warmup (step s < warmup gets HF's value at s + 1)
and equals HF's value at s from warmup on; the test applies that rule and matches to 1e-9.
"""
import json
import math
import os

import torch
from transformers.optimization import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup,
    get_linear_schedule_with_warmup,
    get_wsd_schedule,
)

OUT = os.path.join("tests", "fixtures", "optim")
STEPS = 5
PEAK_LR = 0.05
MAX_NORM = 1.0
# Gradient scale per step: steps 1 and 3 exceed max_norm, the others do not.
GRAD_SCALES = [0.2, 1.5, 0.1, 2.5, 0.15]
# smelt schedule for the learning rates: cosine, 2 warmup steps, floor 0.1, over STEPS.
LR_SCHEDULE = {"kind": "cosine", "warmup_steps": 2, "min_lr_ratio": 0.1}

PARAMS = [
    ("model.layers.0.self_attn.q_proj.weight", (3, 4), 0.1),
    ("model.layers.0.mlp.up_proj.weight", (2, 3), 0.1),
    ("model.layers.0.input_layernorm.weight", (4,), 0.0),
]


def lambda_of(make, **kwargs):
    """The lr multiplier function of a transformers schedule (an optimizer with lr 1)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make(opt, **kwargs)
    return sched.lr_lambdas[0]


def smelt_factor(hf, step, warmup):
    """smelt's convention on top of an HF lambda: the warmup counts the step being taken."""
    return hf(step + 1) if step < warmup else hf(step)


def adamw_fixture():
    gen = torch.Generator().manual_seed(1234)
    params = []
    for name, shape, _ in PARAMS:
        if "norm" in name:
            init = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            init = 0.5 * torch.randn(shape, generator=gen)
        params.append(torch.nn.Parameter(init.to(torch.float32)))
    initial = [p.detach().clone() for p in params]

    groups = [
        {"params": [p for p, (_, _, wd) in zip(params, PARAMS) if wd > 0], "weight_decay": 0.1},
        {"params": [p for p, (_, _, wd) in zip(params, PARAMS) if wd == 0], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=PEAK_LR, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    cosine = lambda_of(
        get_cosine_with_min_lr_schedule_with_warmup,
        num_warmup_steps=LR_SCHEDULE["warmup_steps"],
        num_training_steps=STEPS,
        min_lr_rate=LR_SCHEDULE["min_lr_ratio"],
    )

    steps = []
    for step in range(STEPS):
        grads = [GRAD_SCALES[step] * torch.randn(p.shape, generator=gen) for p in params]
        lr = PEAK_LR * smelt_factor(cosine, step, LR_SCHEDULE["warmup_steps"])
        for p, g in zip(params, grads):
            p.grad = g.clone()
        norm = torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        steps.append(
            {
                "grads": [g.flatten().tolist() for g in grads],
                "lr": lr,
                "pre_clip_norm": float(norm),
                "params_after": [p.detach().flatten().tolist() for p in params],
            }
        )

    return {
        "config": {"beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1},
        "peak_lr": PEAK_LR,
        "max_norm": MAX_NORM,
        "lr_schedule": LR_SCHEDULE,
        "names": [n for n, _, _ in PARAMS],
        "shapes": [list(s) for _, s, _ in PARAMS],
        "decays": [wd > 0 for _, _, wd in PARAMS],
        "initial": [p.flatten().tolist() for p in initial],
        "steps": steps,
    }


def schedules_fixture():
    total = 100
    cases = [
        (
            "constant_warmup10",
            {"kind": "constant", "warmup_steps": 10},
            lambda_of(get_constant_schedule_with_warmup, num_warmup_steps=10),
        ),
        (
            "cosine_warmup10",
            {"kind": "cosine", "warmup_steps": 10, "min_lr_ratio": 0.0},
            lambda_of(get_cosine_schedule_with_warmup, num_warmup_steps=10, num_training_steps=total),
        ),
        (
            "cosine_warmup7_min0.1",
            {"kind": "cosine", "warmup_steps": 7, "min_lr_ratio": 0.1},
            lambda_of(
                get_cosine_with_min_lr_schedule_with_warmup,
                num_warmup_steps=7,
                num_training_steps=total,
                min_lr_rate=0.1,
            ),
        ),
        (
            "linear_warmup10",
            {"kind": "linear", "warmup_steps": 10, "min_lr_ratio": 0.0},
            lambda_of(get_linear_schedule_with_warmup, num_warmup_steps=10, num_training_steps=total),
        ),
        (
            "linear_nowarmup",
            {"kind": "linear", "warmup_steps": 0, "min_lr_ratio": 0.0},
            lambda_of(get_linear_schedule_with_warmup, num_warmup_steps=0, num_training_steps=total),
        ),
    ]
    # WSD: decay length round(decay_fraction * total); fractions chosen so rounding is exact.
    for warmup, fraction, decay, min_ratio in [
        (10, 0.2, "linear", 0.0),
        (10, 0.2, "1-sqrt", 0.0),
        (5, 0.1, "1-sqrt", 0.1),
        (0, 0.3, "linear", 0.05),
    ]:
        decay_steps = int(math.floor(fraction * total + 0.5))
        cases.append(
            (
                f"wsd_warmup{warmup}_decay{fraction}_{decay}_min{min_ratio}",
                {
                    "kind": "wsd",
                    "warmup_steps": warmup,
                    "decay_fraction": fraction,
                    "decay": decay,
                    "min_lr_ratio": min_ratio,
                },
                lambda_of(
                    get_wsd_schedule,
                    num_warmup_steps=warmup,
                    num_decay_steps=decay_steps,
                    num_training_steps=total,
                    warmup_type="linear",
                    decay_type=decay,
                    min_lr_ratio=min_ratio,
                ),
            )
        )
    return {
        "total_steps": total,
        "cases": [
            {
                "name": name,
                "schedule": spec,
                "hf": [float(hf(s)) for s in range(total + 1)],
            }
            for name, spec, hf in cases
        ],
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in [("adamw.json", adamw_fixture()), ("schedules.json", schedules_fixture())]:
        path = os.path.join(OUT, name)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
        print("wrote", path)


if __name__ == "__main__":
    main()
