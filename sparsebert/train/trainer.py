"""The training loop behind `sparsebert sparsify` and `sparsebert finetune`.

One step: take batch `step` of a seeded per-epoch permutation of the data, tokenize it (padded to its
own longest text, truncated at max_length), run the teacher (no grad) and the student, compute the
recipe's loss, take an AdamW step at the learning rate of `lr_at(step)`, re-apply the masks, and at the
schedule's update steps recompute the masks (by magnitude, or by Wanda scores from one calibration
pass, `calibrate.py`), after reordering channels for 1xC blocks at the first one if the recipe says
`permute = true` (`permute.py`). From the recipe's fake_quant step on, the encoder linears run fake-quantized
(`fakequant.py`). With `[training] precision = "bf16"` the teacher and student forwards (and so the
backward) run under bf16 autocast, with fp32 master weights, optimiser and loss: 1.25x the steps per
second over a whole run on Zen 4 (native bf16: AVX512-BF16; AMX also has it), slower than fp32 without
it (a warning says so); fake-quantized steps and the calibration passes stay fp32. With
`[distillation] cache_teacher = true` the teacher's outputs are computed once over the data (at the
recipe's precision) and read back from disk instead (`teacher_cache.py`). Everything a step
depends on (weights, masks, optimiser moments, the step number; data order, dropout and calibration
texts come from seed and step) is in the checkpoint
(`checkpoint.py`), written atomically every `checkpoint_minutes` and on Ctrl-C / SIGTERM, which
are deferred to the end of the current step, so a resumed run ends bitwise where an uninterrupted
one would (same thread count).

Output folder: config.json (kept layer count, task head), model.safetensors (exact zeros), the
teacher's tokenizer and sentence-transformers files, recipe.toml, train.json (loss curve, wall time);
`checkpoint/` is removed when the run completes.

Left out: gradient accumulation, fp16, multi-process data parallelism.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
import warnings
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError, require
from ..prune import _copy_tokenizer_files
from ..tokenizer import Tokenizer
from . import distill, fakequant
from .calibrate import calibration_rows, input_hessians, input_norms
from .checkpoint import load_checkpoint, save_checkpoint
from .gmp import MaskSet, cubic_sparsity, is_update_step, lr_at
from .permute import permute_for_blocks
from .recipe import Recipe, check_layers


class BatchOrder:
    """Rows of batch `step`: each epoch, a seeded permutation of the data cut into chunks of 64
    batches; each chunk sorted by text length (so a batch pads little) and cut into batches, and the
    epoch's batches shuffled. A function of (seed, step) only, so a resumed run sees the same data."""

    def __init__(self, lengths, batch_size: int, seed: int):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.per_epoch = -(-len(self.lengths) // batch_size)
        self._epoch, self._batches = None, None

    def __call__(self, step: int) -> np.ndarray:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(len(self.lengths))
            chunk = 64 * self.batch_size
            batches = []
            for at in range(0, len(perm), chunk):
                part = perm[at:at + chunk]
                part = part[np.argsort(self.lengths[part], kind="stable")]
                batches += [part[i:i + self.batch_size] for i in range(0, len(part), self.batch_size)]
            self._batches = [batches[i] for i in rng.permutation(len(batches))]
            self._epoch = epoch
        return self._batches[k]


class _StopRequest:
    """Ctrl-C and SIGTERM set a flag that the loop reads between steps, so a stop never lands
    inside a step (after the optimiser step but before the masks, or before the step counter moves):
    the checkpoint then holds weights, masks and moments of one step number. A second Ctrl-C
    interrupts at once, keeping the last checkpoint. Handlers are installed from the main thread
    only (Python delivers signals there) and restored on exit."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        if _main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def train(recipe: Recipe, *, init: str | Path, output: str | Path, texts: list[str],
          labels: np.ndarray | None = None, teacher: str | Path | None = None,
          progress: bool = True, max_steps: int | None = None,
          stop_after_minutes: float | None = None, teacher_cache: str | Path | None = None) -> dict:
    """Run `recipe` and write the model to `output`; returns the training summary.

    init: the folder the student starts from (the teacher itself for sparsify, a backbone for
    finetune). teacher: the distillation teacher folder (None: labels only). max_steps: stop after
    this many steps, keeping the checkpoint (for tests of resume); the run continues when called again.
    stop_after_minutes: the same, after this much wall time in this call. A stopped run still writes
    the output folder as it stands (train.json says "finished": false), so it can be evaluated.
    teacher_cache: the root folder of `[distillation] cache_teacher` (default: `teacher_cache.default_root`).
    Ctrl-C / SIGTERM: the current step completes, the checkpoint is saved, KeyboardInterrupt.
    """
    torch = require("torch", "'sparsebert[train]'", "training")
    output = Path(output)
    kind = recipe.task.kind
    if not texts:
        raise InputError("training data is empty; give at least one text")
    if kind == "classification":
        if labels is None or len(labels) != len(texts):
            raise InputError("classification training needs one label per text")
        if int(labels.max()) >= len(recipe.task.labels):
            raise InputError(f"label {int(labels.max())} found in the data, but the recipe names only "
                             f"{len(recipe.task.labels)} labels {list(recipe.task.labels)}")
    torch.set_num_threads(recipe.training.threads)
    torch.manual_seed(recipe.training.seed)
    if recipe.training.precision == "bf16":
        _warn_bf16()

    teacher_model = None
    if teacher is not None:
        d = recipe.distillation
        eager = d is not None and d.attention_weight > 0  # sdpa does not return the probabilities
        teacher_model = distill.load_teacher(teacher, kind, "eager" if eager else "sdpa")
        kept = check_layers(recipe, teacher_model.config.num_hidden_layers)
        student = distill.make_student(teacher_model, kept, recipe.student.dropout)
        if kind == "classification" and teacher_model.config.num_labels != len(recipe.task.labels):
            raise ConfigError(f"[task] labels = {list(recipe.task.labels)} but the teacher has "
                              f"{teacher_model.config.num_labels} labels")
    elif kind == "classification":
        student = distill.head_from_backbone(init, recipe.task.labels, recipe.student.dropout)
        kept = check_layers(recipe, student.config.num_hidden_layers)
        if kept != tuple(range(student.config.num_hidden_layers)):
            student = distill.make_student(student, kept, recipe.student.dropout)
    else:
        raise ConfigError("an embeddings run needs a teacher to distil from (--teacher)")
    if recipe.distillation is not None and teacher_model is None:
        raise ConfigError("the recipe has a [distillation] section but no teacher was given (--teacher)")
    if recipe.student.freeze_embeddings:
        student.base_model.embeddings.requires_grad_(False)

    tokenizer = Tokenizer(Path(init), recipe.training.max_length)
    n = len(texts)
    total = recipe.total_steps(n)
    fq_step = recipe.fake_quant_step(n)
    p = recipe.pruning
    if p is not None:
        start, end = recipe.pruning_window(n)
        masks = MaskSet(distill.encoder_linears(student, p.linears), p.block_shape, p.scope)
        calib = [texts[i] for i in calibration_rows(n, p.calibration_texts, recipe.training.seed)]
    else:
        start = end = 0
        masks = None
    t = recipe.training
    every = p.update_every if p is not None else 1
    optim = torch.optim.AdamW([w for w in student.parameters() if w.requires_grad], lr=t.lr,
                              weight_decay=t.weight_decay)

    ckpt_dir = output / "checkpoint"
    step, history, elapsed, notes = 0, [], 0.0, {}
    if (ckpt_dir / "state.json").is_file():
        step, history, elapsed, notes = load_checkpoint(ckpt_dir, recipe, student, optim, masks)
    elif output.is_dir() and any(output.iterdir()):
        raise ConfigError(f"output folder {str(output)!r} is not empty and holds no checkpoint to "
                          f"resume; choose a new folder")
    output.mkdir(parents=True, exist_ok=True)

    order = BatchOrder([len(x) for x in texts], t.batch_size, t.seed)
    d = recipe.distillation
    want_hidden = d is not None and d.hidden_weight > 0
    want_attn = d is not None and d.attention_weight > 0
    t_cache = cache_info = None
    if d is not None and d.cache_teacher and teacher_model is not None:
        from .teacher_cache import open_or_build

        keep = "all" if want_hidden else "last" if kind == "embeddings" else "none"
        with _StopRequest() as stop:  # Ctrl-C / SIGTERM: the build keeps its finished batches
            t_cache, cache_info = open_or_build(
                teacher_model, texts, tokenizer, precision=t.precision, keep=keep, root=teacher_cache,
                owner=str(output.resolve()), progress=progress, should_stop=lambda: stop.signal is not None)
    stop_at = total if max_steps is None else min(total, step + max_steps)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True, smoothing=0.05)

    started = time.perf_counter()
    t0 = started - elapsed
    last_save = time.perf_counter()
    fake_quant = None
    student.train()

    def save():
        save_checkpoint(ckpt_dir, recipe, student, optim, masks, step, history, time.perf_counter() - t0,
                        notes)

    with _StopRequest() as stop:
        try:
            while step < stop_at and stop.signal is None and (
                    stop_after_minutes is None or time.perf_counter() - started < 60 * stop_after_minutes):
                if fq_step is not None and step >= fq_step and fake_quant is None:
                    fake_quant = fakequant.install(student)
                if masks is not None and is_update_step(step, start, end, p.update_every):
                    method = p.init_method if step == start else p.score
                    if step == start and p.permute:
                        norms = (None if method == "magnitude" else
                                 input_norms(student, masks.params, calib, tokenizer, t.batch_size))
                        notes["channel_permutation"] = permute_for_blocks(
                            student, masks.params, p.block_shape, p.final_sparsity, norms, optim, masks.masks)
                    target = cubic_sparsity(step, p.initial_sparsity, p.final_sparsity, start, end,
                                            p.update_every)
                    if method == "sparsegpt":
                        masks.update_sparsegpt(target, input_hessians(student, masks.params, calib,
                                                                      tokenizer, t.batch_size))
                    else:
                        norms = None
                        if method == "wanda":
                            norms = input_norms(student, masks.params, calib, tokenizer, t.batch_size)
                        masks.update(target, norms)
                torch.manual_seed(t.seed * 1_000_003 + step)  # dropout noise: a function of the step
                rows = order(step)
                inputs = distill.model_inputs(tokenizer([texts[i] for i in rows]))
                mask = inputs["attention_mask"]
                outputs = dict(output_hidden_states=want_hidden, output_attentions=want_attn)
                bf16 = t.precision == "bf16" and fake_quant is None
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    with torch.no_grad():
                        t_out = (None if teacher_model is None or t_cache is not None
                                 else teacher_model(**inputs, **outputs))
                    s_out = student(**inputs, **outputs)
                if bf16:
                    s_out, t_out = _float32(s_out), _float32(t_out)
                if t_cache is not None:
                    t_out = t_cache.outputs(rows, mask)
                y = torch.from_numpy(labels[rows]) if kind == "classification" else None
                loss = _loss(kind, d, s_out, t_out, mask, y, want_hidden, want_attn)
                for group in optim.param_groups:
                    group["lr"] = lr_at(step, t.lr, t.warmup_steps, t.lr_schedule, total, end, start, every)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                if masks is not None:
                    masks.apply()
                step += 1
                loss_value = float(loss.detach())
                history.append([step, loss_value])
                if bar is not None:
                    bar.update(1)
                    post = {"loss": f"{loss_value:.4f}"}
                    if masks is not None:
                        post["sparsity"] = f"{cubic_sparsity(step - 1, p.initial_sparsity, p.final_sparsity, start, end, p.update_every):.3f}"
                    bar.set_postfix(post, refresh=False)
                if time.perf_counter() - last_save >= 60 * t.checkpoint_minutes and step < total:
                    save()
                    last_save = time.perf_counter()
        finally:
            if bar is not None:
                bar.close()
            if fake_quant is not None:
                fakequant.remove(fake_quant)
        if stop.signal is not None:
            save()
            raise KeyboardInterrupt(f"{stop.signal} at step {step}/{total}; checkpoint saved in "
                                    f"{str(ckpt_dir)!r}: run the same command again to resume")
    wall = time.perf_counter() - t0
    finished = step >= total
    if not finished:
        save_checkpoint(ckpt_dir, recipe, student, optim, masks, step, history, wall, notes)
    summary = {
        "task": kind, "finished": finished, "step": step, "total_steps": total, "train_examples": n,
        "layers_kept": list(kept), "wall_seconds": round(wall, 1),
        "encoder_linear_sparsity": masks.sparsity() if masks is not None else 0.0,
        "fake_quant_from_step": fq_step,
        "loss_first_50": float(np.mean([h[1] for h in history[:50]])) if history else None,
        "loss_last_50": float(np.mean([h[1] for h in history[-50:]])) if history else None,
        "loss_curve": history[:: max(1, len(history) // 200)],
        "torch_threads": t.threads, "precision": t.precision, "teacher_cache": cache_info, **notes,
    }
    _write_output(output, student, init, recipe, summary)
    if finished:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return summary


def _loss(kind, d, s_out, t_out, mask, y, want_hidden, want_attn):
    """The recipe's loss for one batch (y: labels, classification only)."""
    import torch

    if kind == "embeddings":
        loss = d.pooled_weight * _pooled(d.pooled_loss, distill.mean_pool(s_out.last_hidden_state, mask),
                                         distill.mean_pool(t_out.last_hidden_state, mask))
    elif t_out is None or d is None:
        return torch.nn.functional.cross_entropy(s_out.logits, y)
    else:
        loss = distill.kd_loss(s_out.logits, t_out.logits, y, d.temperature, d.hardness)
    if want_hidden:
        loss = loss + d.hidden_weight * distill.hidden_mse(s_out.hidden_states, t_out.hidden_states, mask,
                                                           d.hidden_norm == "teacher")
    if want_attn:
        loss = loss + d.attention_weight * distill.attention_kl(s_out.attentions, t_out.attentions, mask)
    return loss


def _float32(out):
    """A bf16-autocast model output with every tensor in float32, so the loss is computed in fp32."""
    if out is not None:
        for key, value in list(out.items()):
            out[key] = tuple(v.float() for v in value) if isinstance(value, tuple) else value.float()
    return out


def _warn_bf16(isa: list[str] | None = None) -> None:
    """Warn when the CPU (LLVM's host features, `tuning.machine()`, unless given) has no native bf16
    arithmetic (AVX512-BF16 or AMX-BF16): autocast then emulates it, and a step is slower than in fp32."""
    if isa is None:
        from ..tuning import machine

        isa = machine()["isa"]
    if "avx512bf16" not in isa and "amx-bf16" not in isa:
        warnings.warn("[training] precision = \"bf16\" on a CPU without AVX512-BF16 or AMX-BF16: bf16 is "
                      "emulated there and steps are slower than fp32; use precision = \"fp32\"",
                      RuntimeWarning, stacklevel=3)


def _pooled(kind, s, t):
    return distill.pooled_cosine(s, t) if kind == "cosine" else distill.pooled_mse(s, t)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _write_output(output: Path, student, init, recipe: Recipe, summary: dict) -> None:
    student.eval()
    student.save_pretrained(str(output), safe_serialization=True)
    _copy_tokenizer_files(Path(init), output)
    (output / "recipe.toml").write_text(recipe.text, encoding="utf-8")
    (output / "train.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
