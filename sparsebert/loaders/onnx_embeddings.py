"""The embeddings stage of the ONNX BERT walker: from the `input_ids` Gather to the first hidden state.

`read_embeddings(graph)` finds the word-embedding Gather on `input_ids` (or, failing that name, the
one Gather of a constant table on a graph input that is not a mask, position or segment input),
climbs the chain of Adds that sums the embedding terms and sorts them:

    Gather(word) + Gather(position) [+ Gather(token type) | + folded constant] -> LayerNorm

A table indexed by a graph input is named by that input (`position_ids` -> position, anything
else -> token type); tables indexed by computed ids are the module defaults, arange positions and
all-zero token types, told apart by size. A folded token-type constant (export without
`token_type_ids`, table reduced to its row 0) comes back as a one-row
`embeddings.token_type_embeddings.weight` with `type_vocab_size` 1; position embeddings folded for
one fixed sequence length are refused, since the table cannot be recovered from them.

It returns the tables under Hugging Face names, their config keys, the hidden width (the word
table's) and the matched LayerNorm, whose output the layer walk (`onnx_reader`) starts from.
Left out: everything after the embeddings LayerNorm (`onnx_reader`, `onnx_heads`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import CheckpointError
from .onnx_graph import _Graph, _attr, _in, _out
from .onnx_patterns import MatchedLayerNorm, Patterns


@dataclasses.dataclass(frozen=True)
class MatchedEmbeddings:
    tables: dict[str, np.ndarray]  # embeddings.{word,position,token_type}_embeddings.weight
    config: dict  # vocab_size, max_position_embeddings, and type_vocab_size if there is a table
    hidden: int  # the word table's width, the model's
    layer_norm: MatchedLayerNorm  # its output is the first encoder layer's input


def read_embeddings(g: _Graph) -> MatchedEmbeddings:
    """The embedding tables and LayerNorm of a BERT export; CheckpointError naming the node when
    the graph does not sum them the way BertEmbeddings does."""
    p = Patterns(g, 0)  # for its error messages; the width is known once the word table is read
    word_node, word = _word_gather(p)
    vocab, hidden = word.shape
    if vocab == 0 or hidden == 0:
        raise CheckpointError(
            f"{g.path!r}: the word-embedding table has shape {word.shape}; an empty "
            f"table cannot be a trained model: re-export it"
        )
    p = Patterns(g, hidden)
    found = {"embeddings.word_embeddings.weight": word}

    # Climb the chain of Adds that sums the embedding terms; it ends at the LayerNorm.
    cur = _out(word_node)
    terms: list[str] = []
    for _ in range(8):
        adds = g.users(cur, "Add")
        if len(adds) != 1 or len(g.users(cur)) != 1:
            break
        add = adds[0][0]
        other = g.other_input(add, cur)
        if other is None:
            raise p.fail(f"embedding Add {add.name!r} is not binary")
        terms.extend(_add_terms(g, other))
        cur = _out(add)
    if not terms:
        raise p.fail(
            f"the word embeddings ({_out(word_node)!r}) are not summed with position "
            f"embeddings before a LayerNorm"
        )

    tables: list[tuple[object, np.ndarray]] = []
    folded: list[np.ndarray] = []
    for term in terms:
        node = g.producer.get(term)
        table = _table(g, node) if node is not None else None
        if table is not None:
            tables.append((node, table))
            continue
        value = g.float_const(term, "embedding constant")
        if value is not None and value.size == hidden:
            folded.append(value.reshape(1, hidden))
            continue
        if value is not None:
            raise CheckpointError(
                f"{g.path!r}: the embedding term {term!r} is a constant of shape "
                f"{value.shape}, i.e. position embeddings folded for one fixed sequence length; "
                f"the position table cannot be recovered from it. Re-export with a dynamic "
                f"sequence axis (dynamic_axes / dynamic_shapes on dimension 1)"
            )
        raise p.fail(
            f"embedding term {term!r} added to the word embeddings is neither a Gather of a "
            f"constant table nor a folded constant of {hidden} values"
        )
    for node, table in tables:
        if table.shape[1] != hidden:
            raise CheckpointError(
                f"{g.path!r}: embedding table {_in(node, 0)!r} has shape {table.shape}, "
                f"but the word embeddings have width {hidden}; the export is inconsistent"
            )

    # Tables indexed by a graph input are named by that input (position_ids -> position,
    # anything else -> token type); tables indexed by computed ids are the module defaults:
    # arange positions and all-zero token types.
    position, token_type, computed = [], [], []
    for node, table in tables:
        source = g.source_input(_in(node, 1))
        if source is None:
            computed.append((node, table))
        elif "position" in source.lower():
            position.append((node, table))
        else:
            token_type.append((node, table))
    if not position and computed:
        if len(computed) == 2 and not token_type and not folded:
            # Position tables have max_position_embeddings rows, token-type tables a handful.
            computed.sort(key=lambda nt: nt[1].shape[0])
            if computed[0][1].shape[0] == computed[1][1].shape[0]:
                raise p.fail(
                    "two embedding tables of equal size are indexed by computed ids; position "
                    "and token-type embeddings cannot be told apart"
                )
        position.append(computed.pop())
    token_type.extend(computed)
    if len(position) != 1:
        raise p.fail(
            f"expected one position-embedding Gather added to the word embeddings, found "
            f"{len(position)} (terms {terms!r})"
        )
    if len(folded) + len(token_type) > 1:
        raise p.fail(f"more than one token-type term added to the word embeddings ({terms!r})")

    position_table = position[0][1]
    found["embeddings.position_embeddings.weight"] = position_table
    config = {"vocab_size": int(vocab), "max_position_embeddings": int(position_table.shape[0])}
    if token_type:
        table = token_type[0][1]
        found["embeddings.token_type_embeddings.weight"] = table
        config["type_vocab_size"] = int(table.shape[0])
    elif folded:
        found["embeddings.token_type_embeddings.weight"] = np.ascontiguousarray(folded[0])
        config["type_vocab_size"] = 1

    ln = p.layer_norm(cur, "embeddings LayerNorm")
    return MatchedEmbeddings(found, config, int(hidden), ln)


def _table(g: _Graph, node) -> np.ndarray | None:
    """The float table of an embedding Gather (axis 0, constant 2-D data), else None."""
    if node.op_type != "Gather" or len(node.input) < 2 or _attr(node, "axis", 0) != 0:
        return None
    table = g.float_const(_in(node, 0), "embedding table")
    if table is None or table.ndim != 2:
        return None
    return table


def _word_gather(p: Patterns):
    g = p.g
    candidates = []
    for node in g.nodes:
        if node.op_type != "Gather" or len(node.input) < 2:
            continue
        source = g.source_input(_in(node, 1))
        if source is None:
            continue
        if g.const(_in(node, 0)) is None:
            continue
        candidates.append((source, node))
    named = [n for s, n in candidates if s == "input_ids"]
    if not named:
        named = [n for s, n in candidates
                 if not any(k in s.lower() for k in ("token_type", "mask", "position", "segment"))]
    if len(named) != 1:
        raise p.fail(
            f"the word-embedding Gather was not found (expected one Gather of a constant table "
            f"indexed by the graph input 'input_ids'; graph inputs are {list(g.input_names)},"
            f" candidate Gathers {[n.name for _, n in candidates]})"
        )
    node = named[0]
    table = _table(g, node)
    if table is None:
        raise p.fail(
            f"the word-embedding Gather {node.name!r} does not read a 2-D float table along "
            f"axis 0"
        )
    return node, table


def _add_terms(g: _Graph, tensor: str, depth: int = 0) -> list[str]:
    """The terms of a (nested) sum feeding the embedding Add chain, at most 8 Adds deep."""
    node = g.producer.get(tensor)
    if node is not None and node.op_type == "Add" and depth < 8 and g.const(tensor) is None:
        return [t for i in node.input for t in _add_terms(g, i, depth + 1)]
    return [tensor]
