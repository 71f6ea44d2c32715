"""Recipes: one TOML file says everything about a training run, so the recipe alone reproduces it.

    [task]          kind = "embeddings" | "classification"; labels = ["neg", "pos"] (classification)
    [student]       layers = [0, 2, 4] (teacher layers kept, in order; omitted: all); dropout;
                    freeze_embeddings = true (word / position / type tables and their LayerNorm
                    are not trained)
    [pruning]       initial_sparsity, final_sparsity, start / end (steps) or start_epoch / end_epoch,
                    update_every (steps), scope = "per-layer" | "global", block = "1x1" | "4x1" |
                    "1x4" | ..., linears (subset of query, key, value, attn_out, ffn_in, ffn_out);
                    init_method = "magnitude" | "wanda" | "sparsegpt" ranks the first mask (the
                    one-shot jump to initial_sparsity at `start`), score (same choices) the later
                    updates; Wanda (Sun et al. 2023) ranks |W[n, k]| x ||x_k||_2, the input norms
                    measured in one forward pass of the student over calibration_texts (default 256)
                    training texts drawn with the seed; SparseGPT (Frantar & Alistarh 2023, per-layer
                    scope only) also updates the kept weights from the input Hessians X^T X;
                    permute = true (1xC blocks) reorders the FFN's intermediate channels and each
                    head's value channels before the first mask so that blocks keep more of the
                    score, without changing what the dense model computes (`permute.py`)
    [distillation]  pooled_loss = "cosine" | "mse", pooled_weight, hidden_weight, hidden_norm =
                    "none" | "teacher" (SquareHead: each layer's MSE over the teacher's mean square);
                    attention_weight (KL between teacher and student attention probabilities per
                    mapped layer, MiniLM; runs both models with eager attention);
                    temperature, hardness (classification: hardness x KL + (1 - hardness) x CE);
                    cache_teacher = true computes the teacher's outputs over the training texts once,
                    stores them on disk and reads them back instead of running the teacher at every
                    step (`teacher_cache.py`; not with attention_weight > 0)
    [training]      optimizer = "adamw", lr, weight_decay, warmup_steps, lr_schedule, batch_size,
                    max_length, steps or epochs, seed, threads, checkpoint_minutes.
                    lr_schedule = "constant" | "linear" (decay to 0 over the run) |
                    "decay-after-pruning" (constant during the sparsity ramp, then linear decay to 0)
                    | "restart-per-update" (oBERT / Prune Once for All: at each mask update the LR
                    jumps back to lr and decays linearly to 0 at the next update; after the ramp,
                    linear decay to 0 over the recovery phase with masks fixed)
    [quantization]  fake_quant_start (step) or fake_quant_start_epoch: from then on every encoder
                    linear runs fake-quantized as `sparsebert quantize` (without --calibration) runs
                    it: weights int8 symmetric per output channel, activations int8 symmetric per
                    token, straight-through gradients; the output folder keeps float weights

Every key is checked: an unknown key, a wrong type or inconsistent values (end before start,
sparsity outside [0, 1), initial above final sparsity, a kept layer listed twice) raise ConfigError
quoting the key and the value. Whether the kept layers exist is checked against the teacher when the
run starts (`check_layers`). A recipe without [pruning] trains dense (fine-tuning, layer-dropped
dense students); without [distillation] it learns from labels only.

Left out: per-layer sparsity overrides, other optimisers, time budgets that would make the end point
depend on the machine (runs stop at a step count, never at a clock).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

from ..errors import ConfigError

LINEARS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
LR_SCHEDULES = ("constant", "linear", "decay-after-pruning", "restart-per-update")
SCORES = ("magnitude", "wanda", "sparsegpt")


@dataclasses.dataclass(frozen=True)
class Task:
    kind: str = "embeddings"
    labels: tuple = ()


@dataclasses.dataclass(frozen=True)
class Student:
    layers: tuple | None = None
    dropout: float = 0.0
    freeze_embeddings: bool = False


@dataclasses.dataclass(frozen=True)
class Pruning:
    final_sparsity: float = 0.0
    initial_sparsity: float = 0.0
    start: int | None = None
    end: int | None = None
    start_epoch: float | None = None
    end_epoch: float | None = None
    update_every: int = 10
    scope: str = "per-layer"
    block: str = "1x1"
    linears: tuple = LINEARS
    init_method: str = "magnitude"
    score: str = "magnitude"
    calibration_texts: int = 256
    permute: bool = False

    @property
    def block_shape(self) -> tuple[int, int]:
        r, c = self.block.lower().split("x")
        return int(r), int(c)


@dataclasses.dataclass(frozen=True)
class Distillation:
    pooled_loss: str = "cosine"
    pooled_weight: float = 1.0
    hidden_weight: float = 0.0
    hidden_norm: str = "none"
    attention_weight: float = 0.0
    temperature: float = 2.0
    hardness: float = 1.0
    cache_teacher: bool = False


@dataclasses.dataclass(frozen=True)
class Training:
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    batch_size: int = 32
    max_length: int = 64
    steps: int | None = None
    epochs: float | None = None
    seed: int = 0
    threads: int = 2
    checkpoint_minutes: float = 3.0
    precision: str = "fp32"  # "bf16": teacher and student forwards under bf16 autocast (trainer.py)


@dataclasses.dataclass(frozen=True)
class Quantization:
    fake_quant_start: int | None = None
    fake_quant_start_epoch: float | None = None


@dataclasses.dataclass(frozen=True)
class Recipe:
    task: Task
    student: Student
    pruning: Pruning | None
    distillation: Distillation | None
    training: Training
    quantization: Quantization | None = None
    text: str = ""  # the TOML source, copied into the output folder

    def total_steps(self, n_examples: int) -> int:
        t = self.training
        if t.steps is not None:
            return t.steps
        return max(1, round(t.epochs * math.ceil(n_examples / t.batch_size)))

    def pruning_window(self, n_examples: int) -> tuple[int, int]:
        """(start, end) step of the sparsity ramp."""
        p = self.pruning
        if p.start is not None or p.end is not None:
            start, end = p.start or 0, p.end if p.end is not None else p.start or 0
        else:
            per_epoch = math.ceil(n_examples / self.training.batch_size)
            start = round((p.start_epoch or 0.0) * per_epoch)
            end = round((p.end_epoch if p.end_epoch is not None else 0.0) * per_epoch)
        total = self.total_steps(n_examples)
        if end > total:
            raise ConfigError(f"[pruning] ends at step {end}, after the run's last step {total}; "
                              f"lower end or raise [training] steps/epochs")
        return start, end

    def fake_quant_step(self, n_examples: int) -> int | None:
        """First fake-quantized step, or None without [quantization]."""
        q = self.quantization
        if q is None:
            return None
        if q.fake_quant_start is not None:
            at = q.fake_quant_start
        else:
            at = round(q.fake_quant_start_epoch * math.ceil(n_examples / self.training.batch_size))
        total = self.total_steps(n_examples)
        if at >= total:
            raise ConfigError(f"[quantization] fake quantization starts at step {at}, at or after the "
                              f"run's end ({total} steps); lower fake_quant_start(_epoch)")
        return at


_SECTIONS = {"task": Task, "student": Student, "pruning": Pruning, "distillation": Distillation,
             "training": Training, "quantization": Quantization}
_OPTIONAL = ("pruning", "distillation", "quantization")
_REQUIRED = ("task", "training")
_CHOICES = {
    ("task", "kind"): ("embeddings", "classification"),
    ("pruning", "scope"): ("per-layer", "global"),
    ("distillation", "pooled_loss"): ("cosine", "mse"),
    ("distillation", "hidden_norm"): ("none", "teacher"),
    ("training", "optimizer"): ("adamw",),
    ("training", "lr_schedule"): LR_SCHEDULES,
    ("training", "precision"): ("fp32", "bf16"),
    ("pruning", "init_method"): SCORES,
    ("pruning", "score"): SCORES,
}


def _coerce(section: str, key: str, value, default):
    where = f"[{section}] {key} = {value!r}"
    field_type = {f.name: f.type for f in dataclasses.fields(_SECTIONS[section])}[key]
    if "tuple" in field_type:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list")
        want = str if key in ("labels", "linears") else int
        if any(isinstance(v, bool) or not isinstance(v, want) for v in value):
            raise ConfigError(f"{where}: expected a list of {want.__name__}")
        return tuple(value)
    if field_type == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false")
        return value
    if "float" in field_type:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: expected a number")
        return float(value)
    if "int" in field_type:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string")
    choices = _CHOICES.get((section, key))
    if choices and value not in choices:
        raise ConfigError(f"{where}: expected one of {list(choices)}")
    return value


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; known: {sorted(_SECTIONS)}")
    for name in _REQUIRED:
        if name not in raw:
            raise ConfigError(f"{source}: missing the [{name}] section")
    parts = {}
    for name, cls in _SECTIONS.items():
        if name not in raw:
            parts[name] = None if name in _OPTIONAL else cls()
            continue
        table = raw[name]
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {name} must be a [{name}] table, got {table!r}")
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        bad = sorted(set(table) - set(fields))
        if bad:
            raise ConfigError(f"{source}: unknown key(s) {bad} in [{name}]; known: {sorted(fields)}")
        parts[name] = cls(**{k: _coerce(name, k, v, fields[k]) for k, v in table.items()})
    recipe = Recipe(**parts, text=text)
    _check(recipe, source)
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Parse a recipe file; a bare name such as "minilm-emb-80" is looked up among the shipped ones."""
    p = Path(path)
    if not p.is_file() and p.suffix == "" and (RECIPES_DIR / f"{p.name}.toml").is_file():
        p = RECIPES_DIR / f"{p.name}.toml"
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        shipped = sorted(f.stem for f in RECIPES_DIR.glob("*.toml"))
        raise ConfigError(f"cannot read recipe {str(path)!r}: {exc}; shipped recipes: {shipped}") from None
    return parse_recipe(text, str(p))


RECIPES_DIR = Path(__file__).parent / "recipes"


def _check(r: Recipe, source: str) -> None:
    def fail(msg):
        raise ConfigError(f"{source}: {msg}")

    if r.task.kind == "classification" and len(r.task.labels) < 2:
        fail(f"[task] labels = {list(r.task.labels)!r}: a classification task needs at least two labels")
    if r.task.kind == "embeddings" and r.task.labels:
        fail(f"[task] labels = {list(r.task.labels)!r} only applies to kind = \"classification\"")
    if r.student.layers is not None:
        if not r.student.layers or len(set(r.student.layers)) != len(r.student.layers):
            fail(f"[student] layers = {list(r.student.layers)!r}: give distinct layer indices")
        if min(r.student.layers) < 0:
            fail(f"[student] layers = {list(r.student.layers)!r}: indices start at 0")
    if not 0.0 <= r.student.dropout < 1.0:
        fail(f"[student] dropout = {r.student.dropout!r}: must be in [0, 1)")
    t = r.training
    if (t.steps is None) == (t.epochs is None):
        fail("[training] give exactly one of steps and epochs")
    if (t.steps is not None and t.steps < 1) or (t.epochs is not None and t.epochs <= 0):
        fail(f"[training] steps = {t.steps!r} / epochs = {t.epochs!r}: must be positive")
    for key in ("batch_size", "threads"):
        if getattr(t, key) < 1:
            fail(f"[training] {key} = {getattr(t, key)!r}: must be >= 1")
    if not 8 <= t.max_length <= 512:
        fail(f"[training] max_length = {t.max_length!r}: must be in [8, 512]")
    if t.lr <= 0 or t.weight_decay < 0 or t.warmup_steps < 0 or t.checkpoint_minutes <= 0:
        fail(f"[training] lr = {t.lr!r}, weight_decay = {t.weight_decay!r}, warmup_steps = "
             f"{t.warmup_steps!r}, checkpoint_minutes = {t.checkpoint_minutes!r}: lr and "
             f"checkpoint_minutes must be positive, the others >= 0")
    p = r.pruning
    if p is not None:
        for key in ("initial_sparsity", "final_sparsity"):
            if not 0.0 <= getattr(p, key) < 1.0:
                fail(f"[pruning] {key} = {getattr(p, key)!r}: sparsity must be in [0, 1)")
        if p.initial_sparsity > p.final_sparsity:
            fail(f"[pruning] initial_sparsity = {p.initial_sparsity!r} is above final_sparsity = "
                 f"{p.final_sparsity!r}")
        by_step = p.start is not None or p.end is not None
        by_epoch = p.start_epoch is not None or p.end_epoch is not None
        if by_step == by_epoch:
            fail("[pruning] give the ramp in steps (start, end) or in epochs (start_epoch, "
                 "end_epoch), not both and not neither")
        start, end = (p.start or 0, p.end) if by_step else (p.start_epoch or 0, p.end_epoch)
        if end is None or start < 0 or end < start:
            fail(f"[pruning] end = {end!r} is before start = {start!r} (or missing); the ramp needs "
                 f"0 <= start <= end")
        if p.update_every < 1:
            fail(f"[pruning] update_every = {p.update_every!r}: must be >= 1 step")
        if p.calibration_texts < 1:
            fail(f"[pruning] calibration_texts = {p.calibration_texts!r}: must be >= 1 (Wanda's "
                 f"input norms come from that many training texts)")
        if "sparsegpt" in (p.init_method, p.score) and p.scope != "per-layer":
            fail(f"[pruning] scope = {p.scope!r} with SparseGPT: it prunes each linear from its own "
                 f"input Hessian; use scope = \"per-layer\" or another init_method / score")
        bad = [x for x in p.linears if x not in LINEARS]
        if bad or not p.linears or len(set(p.linears)) != len(p.linears):
            fail(f"[pruning] linears = {list(p.linears)!r}: choose distinct names among {list(LINEARS)}")
        parts = p.block.lower().split("x")
        if len(parts) != 2 or not all(s.isdigit() and int(s) >= 1 for s in parts):
            fail(f"[pruning] block = {p.block!r}: expected 'RxC' rows x columns of W (out, in), e.g. '4x1'")
        if p.permute and (int(parts[0]) != 1 or int(parts[1]) < 2):
            fail(f"[pruning] permute = true with block = {p.block!r}: channel permutation groups input "
                 f"columns for 1xC blocks (e.g. \"1x4\"); set permute = false or block = \"1x4\"")
    d = r.distillation
    if d is not None:
        if d.pooled_weight < 0 or d.hidden_weight < 0 or d.attention_weight < 0 or d.temperature <= 0:
            fail(f"[distillation] pooled_weight = {d.pooled_weight!r}, hidden_weight = "
                 f"{d.hidden_weight!r}, attention_weight = {d.attention_weight!r}, temperature = "
                 f"{d.temperature!r}: weights must be >= 0 and the temperature > 0")
        if not 0.0 <= d.hardness <= 1.0:
            fail(f"[distillation] hardness = {d.hardness!r}: must be in [0, 1]")
        if d.cache_teacher and d.attention_weight > 0:
            fail(f"[distillation] cache_teacher = true with attention_weight = {d.attention_weight!r}: "
                 f"attention probabilities are not cached (B x heads x T x T per layer); set "
                 f"attention_weight = 0 or cache_teacher = false")
    elif r.task.kind == "embeddings":
        fail("an embeddings recipe needs a [distillation] section: the teacher is its only signal")
    if t.lr_schedule == "restart-per-update" and p is None:
        fail("[training] lr_schedule = \"restart-per-update\" restarts the LR at each mask update; "
             "it needs a [pruning] section (or choose \"linear\")")
    q = r.quantization
    if q is not None:
        if (q.fake_quant_start is None) == (q.fake_quant_start_epoch is None):
            fail("[quantization] give exactly one of fake_quant_start (step) and fake_quant_start_epoch")
        at = q.fake_quant_start if q.fake_quant_start is not None else q.fake_quant_start_epoch
        if at < 0:
            fail(f"[quantization] fake_quant_start = {at!r}: must be >= 0")


def check_layers(recipe: Recipe, teacher_layers: int) -> tuple[int, ...]:
    """The kept teacher layers, checked against the teacher's depth."""
    layers = recipe.student.layers
    if layers is None:
        return tuple(range(teacher_layers))
    bad = [i for i in layers if i >= teacher_layers]
    if bad:
        raise ConfigError(f"[student] layers = {list(layers)!r}: the teacher has {teacher_layers} layers "
                          f"(0..{teacher_layers - 1}), so {bad} do not exist")
    return tuple(layers)
