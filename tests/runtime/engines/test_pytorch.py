"""The torch backend (holopart_infer/engines/pytorch.py) computes the faithful model's function."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the fast path needs the [torch] extra")

from holopart_infer.engines.pytorch import DeviceTensor, FastTorchBackend  # noqa: E402
from holopart_infer.networks.load import load_networks  # noqa: E402
from holopart_infer.export.torch_backend import TorchBackend  # noqa: E402
from holopart_infer.model.sampler import sample  # noqa: E402
from holopart_infer.verify import relative_error  # noqa: E402

from tests.support import golden_dirs  # noqa: E402

TOL = 1e-5


def _weights(tiny_checkpoint) -> Path:
    dirs = golden_dirs()
    return dirs[0] / "weights" if dirs else tiny_checkpoint


@pytest.fixture(scope="module")
def backends(tiny_checkpoint):
    nets = load_networks(_weights(tiny_checkpoint), precision="fp32", device="cpu")
    return TorchBackend(nets, "cpu", "fp32"), FastTorchBackend(nets, "cpu", "fp32")


def _inputs(ref: TorchBackend, B: int, seed: int):
    rng = np.random.default_rng(seed)
    tc = ref.nets.transformer.cfg
    K = ref.num_tokens
    T = 32
    x = rng.standard_normal((B, T, tc.in_channels), dtype=np.float32)
    pc = rng.standard_normal((B, K, tc.cross_attention_dim), dtype=np.float32)
    wc = rng.standard_normal((B, K, tc.cross_attention_2_dim), dtype=np.float32)
    return x, pc, wc


def test_original_model_is_left_untouched(backends):
    ref, fast = backends
    for m in ref.nets.transformer.modules():
        if hasattr(m, "layout"):
            assert m.layout == "original"
    assert fast.dit_path.net.blocks[0].attn1.layout == "standard"


@pytest.mark.parametrize("guidance", [3.5, 1.0])
def test_guided_step_matches_torch_backend(backends, guidance):
    ref, fast = backends
    x, pc, wc = _inputs(ref, 3, seed=1)
    want = ref.guided_step(x, 731.0, 0.02, guidance, pc, wc)
    got = fast.guided_step(x, 731.0, 0.02, guidance, pc, wc)
    assert isinstance(got, DeviceTensor)
    assert relative_error(np.asarray(got), want) < TOL
    # the velocity itself, not just x + dt*v (dt small hides errors in v)
    want_v = ref.dit(x, np.full(3, 731.0, np.float32), pc, wc)
    got_v = np.asarray(fast.dit(x, np.full(3, 731.0, np.float32), pc, wc))
    assert relative_error(got_v, want_v) < TOL


def test_condition_cache_follows_new_conditions(backends):
    ref, fast = backends
    x, pc, wc = _inputs(ref, 2, seed=2)
    fast.guided_step(x, 500.0, 0.1, 3.5, pc, wc)
    pc2, wc2 = pc + 1.0, wc * 0.5  # new objects: the cache must not be reused
    want = ref.guided_step(x, 500.0, 0.1, 3.5, pc2, wc2)
    got = np.asarray(fast.guided_step(x, 500.0, 0.1, 3.5, pc2, wc2))
    assert relative_error(got, want) < TOL


def test_four_step_sample_matches_torch_backend(backends):
    ref, fast = backends
    x, pc, wc = _inputs(ref, 2, seed=3)
    want = sample(ref.guided_step, x, pc, wc, steps=4, guidance=3.5)
    got = sample(fast.guided_step, x, pc, wc, steps=4, guidance=3.5)  # stays a DeviceTensor in the loop
    assert isinstance(got, DeviceTensor)
    assert relative_error(np.asarray(got), want) < TOL
    got2 = fast.dit_path.sample(x, pc, wc, steps=4, guidance=3.5)
    assert relative_error(got2.numpy(), want) < TOL


def test_golden_sample_latents(tiny_checkpoint):
    dirs = golden_dirs()
    if not dirs:
        pytest.skip("no golden folder")
    cases = np.load(dirs[0] / "cases.npz")
    fast = FastTorchBackend.from_checkpoint(dirs[0] / "weights", "cpu", "fp32")
    ref = TorchBackend.from_checkpoint(dirs[0] / "weights", "cpu", "fp32")
    v = fast.dit(cases["dit.hidden_states"], cases["dit.timestep"], cases["dit.encoder_hidden_states"],
                 cases["dit.encoder_hidden_states_2"])
    assert relative_error(np.asarray(v), cases["dit.out"]) < 1e-4
    pc, wc = cases["dit.encoder_hidden_states"], cases["dit.encoder_hidden_states_2"]
    want = sample(ref.guided_step, cases["sample.noise"], pc, wc, steps=4, guidance=3.5)
    got = sample(fast.guided_step, cases["sample.noise"], pc, wc, steps=4, guidance=3.5)
    assert relative_error(np.asarray(got), want) < TOL


def test_encoder_and_decoder_match(backends):
    ref, fast = backends
    rng = np.random.default_rng(4)
    K = ref.num_tokens
    args = (rng.standard_normal((2, K, 6), dtype=np.float32), rng.standard_normal((2, 64, 7), dtype=np.float32),
            rng.standard_normal((2, K, 6), dtype=np.float32), rng.standard_normal((2, 64, 6), dtype=np.float32))
    for a, b in zip(ref.encode(*args), fast.encode(*args)):
        assert relative_error(np.asarray(b), a) < TOL
    lat = rng.standard_normal((2, 32, ref.nets.vae.cfg.latent_channels), dtype=np.float32)
    pts = rng.uniform(-1, 1, (2, 300, 3)).astype(np.float32)
    want = ref.decoder_query(pts, ref.decoder_kv(lat))
    fast.decoder.max_rows = 128  # force the chunked path
    got = fast.decoder_query(pts, fast.decoder_kv(lat))
    assert relative_error(got.reshape(want.shape), want) < TOL


def test_graph_modes_need_cuda_and_the_torch_backend(tiny_checkpoint):
    """CUDA graphs are an explicit load() option: asked for where they cannot run, they raise."""
    import holopart_infer as hp
    from holopart_infer import assets
    from holopart_infer.errors import InputError

    nets = load_networks(_weights(tiny_checkpoint), precision="fp32", device="cpu")
    with pytest.raises(InputError, match="graph='cuda_graph'.*needs a CUDA device"):
        FastTorchBackend(nets, "cpu", "fp32", graph="cuda_graph")
    with pytest.raises(InputError, match="graph must be one of eager, cuda_graph, compile"):
        FastTorchBackend(nets, "cpu", "fp32", graph="fast")
    with pytest.raises(InputError, match="needs a CUDA device"):
        hp.load(tiny_checkpoint, device="cpu", graph="cuda_graph")
    with pytest.raises(InputError, match="backend 'onnxruntime' on cpu .picked by auto. takes the options"):
        hp.load(assets.demo_model_path(), device="cpu", graph="cuda_graph")
    assert hp.load(tiny_checkpoint, device="cpu", graph="eager").backend.dit_path.graph_mode == "eager"


@pytest.mark.requires_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graph_step_matches_eager(tiny_checkpoint):
    nets = load_networks(_weights(tiny_checkpoint), precision="fp32", device="cpu")
    eager = FastTorchBackend(nets, "cuda", "fp32")
    graphed = FastTorchBackend(nets, "cuda", "fp32", graph="cuda_graph")
    rng = np.random.default_rng(5)
    tc = nets.transformer.cfg
    x = rng.standard_normal((2, 32, tc.in_channels), dtype=np.float32)
    pc = rng.standard_normal((2, eager.num_tokens, tc.cross_attention_dim), dtype=np.float32)
    wc = rng.standard_normal((2, eager.num_tokens, tc.cross_attention_2_dim), dtype=np.float32)
    want = sample(eager.guided_step, x, pc, wc, steps=4, guidance=3.5)
    got = sample(graphed.guided_step, x, pc, wc, steps=4, guidance=3.5)
    assert relative_error(np.asarray(got), np.asarray(want)) < 1e-4


@pytest.mark.requires_cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile (graph='compile') is CUDA-only here")
def test_compiled_step_matches_eager(tiny_checkpoint):
    """graph='compile' (torch.compile, reduce-overhead) samples what eager samples, guided and not."""
    nets = load_networks(_weights(tiny_checkpoint), precision="fp32", device="cpu")
    eager = FastTorchBackend(nets, "cuda", "fp32")
    compiled = FastTorchBackend(nets, "cuda", "fp32", graph="compile")
    assert compiled.dit_path.graph_mode == "compile"
    rng = np.random.default_rng(6)
    tc = nets.transformer.cfg
    x = rng.standard_normal((2, 32, tc.in_channels), dtype=np.float32)
    pc = rng.standard_normal((2, eager.num_tokens, tc.cross_attention_dim), dtype=np.float32)
    wc = rng.standard_normal((2, eager.num_tokens, tc.cross_attention_2_dim), dtype=np.float32)
    for guidance in (3.5, 1.0):
        want = sample(eager.guided_step, x, pc, wc, steps=3, guidance=guidance)
        got = sample(compiled.guided_step, x, pc, wc, steps=3, guidance=guidance)
        assert relative_error(np.asarray(got), np.asarray(want)) < 1e-4, guidance
