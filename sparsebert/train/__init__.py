"""Making sparse models worth running: compound sparsification of BERT encoders on a CPU.

Gradual magnitude pruning (Zhu & Gupta 2017) while the student trains, layer dropping (the student
keeps some of the teacher's layers, initialised from them) and knowledge distillation from the dense
teacher (pooled embeddings and hidden states for sentence embeddings; KL at a temperature against
the labels for classification): the recipe of Kurtic et al. 2022 ("The Optimal BERT Surgeon") and
Neural Magic's SparseML BERT recipes, with GMP in place of second-order pruning. A declarative TOML
recipe (`recipe.py`, shipped ones in `recipes/`) says everything about a run; the output is a Hugging
Face folder with exact zeros that `sparsebert.load`, `sparsebert.pipeline` and transformers read.

Modules: recipe (parsing, checks), gmp (schedule, masks, LR), calibrate (Wanda input norms and
Hessians), sparsegpt (SparseGPT masks and reconstruction), fakequant (int8-aware steps), distill
(models, losses), trainer (the loop, output), checkpoint (resume state), data (fetching real text
into a cache, readers), evaluate (task metrics with the sparsebert runtime), points and committed
(the accuracy-vs-speed figure's points, from run folders and from committed results), cli
(`sparsebert fetch-data | finetune | sparsify | evaluate`).

Needs the [train] extra (torch, transformers, tqdm); the runtime never imports this package.
Left out: second-order (oBERT) and movement pruning, learned quantisation scales, GPUs,
multi-process training.
"""

from .recipe import Recipe, load_recipe, parse_recipe


def train(*args, **kwargs):
    """See `sparsebert.train.trainer.train` (imported lazily: it needs torch)."""
    from .trainer import train as _train

    return _train(*args, **kwargs)


__all__ = ["Recipe", "load_recipe", "parse_recipe", "train"]
