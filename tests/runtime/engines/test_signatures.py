"""The one graph-signature table and the one feed checker every backend calls."""
from __future__ import annotations

import numpy as np
import pytest

from holopart_infer import assets
from holopart_infer.engines.signatures import SIGNATURES, check_feeds, model_dims
from holopart_infer.errors import ShapeError
from holopart_infer.model.manifest import GRAPH_NAMES, load_manifest


def test_table_is_what_the_exporter_declares():
    """Every graph of an exported model dir has the table's inputs and outputs: names, dtype,
    and shapes once the config's model axes are filled in (free axes keep their letters)."""
    m = load_manifest(assets.demo_model_path(), verify_hashes=False)
    dims = model_dims(m.config)
    assert set(SIGNATURES) == set(GRAPH_NAMES) == set(m.graphs)
    for name, sig in SIGNATURES.items():
        g = m.graph(name)
        for ours, theirs in ((sig.inputs, g.inputs), (sig.outputs, g.outputs)):
            assert [t.name for t in ours] == list(theirs), name
            for t in ours:
                assert t.dtype == theirs[t.name].dtype
                assert tuple(dims.get(d, d) if isinstance(d, str) else d for d in t.shape) == \
                    tuple(theirs[t.name].shape), (name, t.name)


def test_one_message_format_names_tensor_expected_and_actual():
    dims = {"C": 8, "Dc": 32, "Dc2": 32}
    cond = np.zeros((2, 4, 32), np.float32)
    with pytest.raises(ShapeError, match=r"^graph 'dit': input 'latents' has shape \(2, 10, 9\), expected "
                                         r"\(B, T, 8\) float32 \(axis 2 must be 8\); "):
        check_feeds("dit", {"latents": np.zeros((2, 10, 9), np.float32), "timestep": np.zeros(2, np.float32),
                            "part_cond": cond, "whole_cond": cond}, dims)
    with pytest.raises(ShapeError, match=r"^graph 'vae_kv': input 'latents' has dtype float64, expected float32 "
                                         r".*; convert it"):
        check_feeds("vae_kv", {"latents": np.zeros((1, 4, 8))}, dims)
    with pytest.raises(ShapeError, match=r"input 'timestep' has shape \(3,\), expected \(B,\) float32 with B=2 as "
                                         r"in input 'latents'"):
        check_feeds("dit", {"latents": np.zeros((2, 10, 8), np.float32), "timestep": np.zeros(3, np.float32),
                            "part_cond": cond, "whole_cond": cond}, dims)
    with pytest.raises(ShapeError, match=r"graph 'vae_kv': inputs .* \(missing \['latents'\], unexpected \['x'\]"):
        check_feeds("vae_kv", {"x": np.zeros((1, 4, 8), np.float32)}, dims)
    # partial: only what is given is checked; free axes take any size
    check_feeds("vae_query", {"points": np.zeros((3, 7, 3), np.float32)}, dims, partial=True)
    with pytest.raises(ShapeError, match=r"graph 'vae_query': input 'points' has shape \(3, 7\), expected \(B, Q, 3\) "
                                         r"float32 \(rank 3, got 2\)"):
        check_feeds("vae_query", {"points": np.zeros((3, 7), np.float32)}, dims, partial=True)


def test_model_dims_from_config():
    cfg = {"transformer": {"in_channels": 8, "cross_attention_dim": 32, "cross_attention_2_dim": 16},
           "vae": {"num_attention_heads": 4, "width_decoder": 64}, "part_encoder": {"dim": 32}}
    assert model_dims(cfg) == {"C": 8, "Dc": 32, "Dc2": 16, "D": 32, "H": 4, "dh": 16}
    assert model_dims({}) == {}  # an axis without its field stays free
