#!/usr/bin/env python3
"""TRL reference trajectories for smelt's SFT / DPO parity test (algorithms/tests/trl_parity.rs).

Runs TRL 1.16's SFTTrainer and DPOTrainer on the real SmolLM2-135M-Instruct (f32, CPU) for
5 steps, batch 4, max_length 256, no packing — the `trl-sft` / `trl-dpo` workloads of
../shared/bench/reference.py, whose model loader and rows this script imports — and records
what smelt needs to replay the run exactly:

- the rows, as JSONL (`tests/fixtures/trl/{sft,dpo}.jsonl`), so smelt reads the same data;
- the ORDER in which the HF Trainer's seeded RandomSampler fed the examples: the collator
  is wrapped and each batch's examples are matched back to their dataset index by their
  token ids (every row is distinct), so the order is read, not re-derived;
- TRL's tokenization of every example it fed (smelt's encoders must reproduce it);
- per step: the loss (unrounded, from `compute_loss`), the learning rate the optimizer
  used, and the pre-clip gradient norm;
- the hyper-parameters (HF Trainer defaults made explicit).

Run from the repository root:
    PY=$(../shared/bench/setup-python.sh)
    GGUF=$(../shared/scripts/fetch-smollm2.sh)
    $PY scripts/trl_parity.py --gguf $GGUF            # writes tests/fixtures/trl/*
"""
import argparse, json, os, sys, tempfile, warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "shared", "bench"))
from reference import load, _sft_rows, _pref_rows  # noqa: E402

STEPS, BATCH, MAX_LENGTH, SEED, ROWS = 5, 4, 256, 1234, 64
# HF Trainer / TRL 1.16 defaults, stated so the fixture carries them.
HYPER = dict(adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0,
             lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0)


def common(out_dir):
    return dict(output_dir=out_dir, max_steps=STEPS, logging_steps=1, save_strategy="no", report_to=[],
                use_cpu=True, bf16=False, seed=SEED, dataloader_num_workers=0,
                per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, max_length=MAX_LENGTH,
                gradient_checkpointing=False, **HYPER)


class Recorder:
    """Collects the per-step numbers through a callback, a wrapped collator and compute_loss."""

    def __init__(self, key_of):
        self.key_of, self.index = key_of, {}
        self.batches, self.losses, self.lrs = [], [], []

    def wrap(self, trainer):
        self.index = {self.key_of(ex): i for i, ex in enumerate(trainer.train_dataset)}
        assert len(self.index) == len(trainer.train_dataset), "rows must tokenize to distinct ids"
        inner = trainer.data_collator

        def collate(features):
            self.batches.append([self.index[self.key_of(f)] for f in features])
            return inner(features)

        trainer.data_collator = collate
        from transformers import TrainerCallback
        outer = self

        class CB(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kw):
                outer.lrs.append(optimizer.param_groups[0]["lr"])

        trainer.add_callback(CB())

    def steps(self, trainer):
        norms = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
        logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        assert len(self.losses) == len(logged) == STEPS, (self.losses, logged)
        assert all(abs(a - b) < 1e-6 for a, b in zip(self.losses, logged)), (self.losses, logged)
        return [{"step": s + 1, "loss": self.losses[s], "learning_rate": self.lrs[s],
                 "grad_norm": float(norms[s]), "examples": self.batches[s]} for s in range(STEPS)]


def recording(cls, rec):
    class Recording(cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
            loss = out[0] if return_outputs else out
            if model.training:
                rec.losses.append(loss.detach().float().item())
            return out
    return Recording


def write_jsonl(path, rows):
    with open(path + ".part", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(path + ".part", path)


def write_json(path, obj):
    with open(path + ".part", "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(path + ".part", path)


def versions():
    import torch, transformers, trl
    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}


def run_sft(gguf, out):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    rows = _sft_rows(ROWS)
    write_jsonl(os.path.join(out, "sft.jsonl"), rows)
    tok, model = load(gguf)
    rec = Recorder(lambda ex: tuple(ex["input_ids"]))
    cfg = SFTConfig(**common(tempfile.mkdtemp(prefix="smelt-trl-sft-")), learning_rate=2e-5,
                    assistant_only_loss=False, packing=False)
    tr = recording(SFTTrainer, rec)(model=model, args=cfg, train_dataset=Dataset.from_list(rows),
                                    processing_class=tok)
    rec.wrap(tr)
    tr.train()
    steps = rec.steps(tr)
    used = sorted({i for s in steps for i in s["examples"]})
    write_json(os.path.join(out, "sft.json"), {
        "script": "scripts/trl_parity.py", "versions": versions(), "data": "sft.jsonl",
        "config": {"learning_rate": 2e-5, "per_device_train_batch_size": BATCH, "max_length": MAX_LENGTH,
                   "max_steps": STEPS, "seed": SEED, "packing": False, "assistant_only_loss": False, **HYPER},
        "pad_token_id": tok.pad_token_id,
        "steps": steps,
        "input_ids": {str(i): tr.train_dataset[i]["input_ids"] for i in used},
    })
    return [s["loss"] for s in steps]


def run_dpo(gguf, out):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    rows = _pref_rows(ROWS)
    write_jsonl(os.path.join(out, "dpo.jsonl"), rows)
    tok, model = load(gguf)
    rec = Recorder(lambda ex: (tuple(ex["prompt_ids"]), tuple(ex["chosen_ids"]), tuple(ex["rejected_ids"])))
    cfg = DPOConfig(**common(tempfile.mkdtemp(prefix="smelt-trl-dpo-")), learning_rate=1e-6, beta=0.1,
                    loss_type=["sigmoid"])
    tr = recording(DPOTrainer, rec)(model=model, args=cfg, train_dataset=Dataset.from_list(rows),
                                    processing_class=tok)
    rec.wrap(tr)
    tr.train()
    steps = rec.steps(tr)
    used = sorted({i for s in steps for i in s["examples"]})
    ds = tr.train_dataset
    write_json(os.path.join(out, "dpo.json"), {
        "script": "scripts/trl_parity.py", "versions": versions(), "data": "dpo.jsonl",
        "config": {"learning_rate": 1e-6, "beta": 0.1, "loss_type": "sigmoid", "per_device_train_batch_size": BATCH,
                   "max_length": MAX_LENGTH, "max_steps": STEPS, "seed": SEED, **HYPER},
        "pad_token_id": tok.pad_token_id,
        "steps": steps,
        "examples": {str(i): {k: ds[i][k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for i in used},
    })
    return [s["loss"] for s in steps]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", required=True)
    p.add_argument("--out", default=os.path.join(HERE, "..", "tests", "fixtures", "trl"))
    p.add_argument("--only", choices=["sft", "dpo"])
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    res = {}
    if a.only in (None, "sft"):
        res["sft_losses"] = run_sft(a.gguf, a.out)
    if a.only in (None, "dpo"):
        res["dpo_losses"] = run_dpo(a.gguf, a.out)
    print(json.dumps(res))


if __name__ == "__main__":
    sys.exit(main())
