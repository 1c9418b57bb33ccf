"""Per-network export contracts (one module per network).

Each module declares, for its graphs: input/output names and symbolic shapes
(which axes are dynamic), a wrapper module that casts at the float32 boundary,
sample inputs for tracing and for validation, and TensorRT shape profiles.
:func:`holopart_infer.export.graphs.all_graphs` lists every graph of a model directory in the
order they are exported.
"""
from __future__ import annotations

from .common import GraphDef, TensorDecl, prepare_for_export
from . import dit, part_encoder, vae

GRAPH_NAMES = ("part_encoder", "dit", "guided_step", "vae_kv", "vae_query")


def all_graphs(nets, dtype, latent_tokens: int) -> list[GraphDef]:
    """GraphDefs of every graph, built on standard-layout copies of ``nets``' modules."""
    graphs = (part_encoder.graphs(nets.part_encoder, dtype)
              + dit.graphs(nets.transformer, dtype, latent_tokens, nets.part_encoder.cfg.num_tokens)
              + vae.graphs(nets.vae, dtype, latent_tokens))
    assert tuple(g.name for g in graphs) == GRAPH_NAMES
    return graphs


__all__ = ["GraphDef", "TensorDecl", "GRAPH_NAMES", "all_graphs", "prepare_for_export"]
