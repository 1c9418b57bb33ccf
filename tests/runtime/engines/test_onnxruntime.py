"""OrtBackend: golden check, ORT vs the PyTorch model on another config, bad inputs, CUDA."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from holopart_infer.errors import BackendUnavailable, InputFileNotFound, ModelDirError, ShapeError
from holopart_infer.verify import relative_error
from tests.support import golden_dirs

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch", reason="exporting the test models needs the [torch] extra")

from holopart_infer.engines.onnxruntime import OrtBackend  # noqa: E402
from holopart_infer.errors import InputError  # noqa: E402
from tests.support import checkpoint, exported_model  # noqa: E402

ort = pytest.importorskip("onnxruntime")
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
requires_cuda = pytest.mark.requires_cuda
TOL = 1e-4


@pytest.mark.skipif(not golden_dirs(), reason="no golden folder under ../shared/golden")
def test_verify_golden_with_onnxruntime():
    """The command users run: verify --backend onnxruntime --model MODEL_DIR."""
    r = subprocess.run([sys.executable, "-m", "holopart_infer.cli", "verify", str(golden_dirs()[0]),
                        "--backend", "onnxruntime", "--model", str(exported_model("golden"))],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [ln for ln in r.stdout.splitlines() if "rel_err=" in ln]
    assert len(lines) == 9 and all(ln.endswith("ok") for ln in lines), r.stdout


@pytest.fixture(scope="module")
def variant():
    from holopart_infer.export.torch_backend import TorchBackend

    return OrtBackend.from_model_dir(exported_model("variant")), TorchBackend.from_checkpoint(checkpoint("variant"))


def _inputs(cfg, B=2, T=40, N=50, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    pe, tr = cfg["part_encoder"], cfg["transformer"]
    K = pe["num_tokens"]
    whole = np.concatenate([f(B, N, 6), (rng.random((B, N, 1)) > 0.5).astype(np.float32)], -1)
    return dict(part=f(B, K, 6), whole=whole, local=f(B, K, 6), local_points=f(B, N, 6),
                latents=f(B, T, tr["in_channels"]), t=rng.uniform(0, 1000, B).astype(np.float32),
                points=rng.uniform(-1.05, 1.05, (B, 333, 3)).astype(np.float32))


def test_variant_config_matches_torch(variant):
    ours, ref = variant
    assert ours.num_tokens == ref.num_tokens == 8
    x = _inputs(ours.config)
    enc_o = ours.encode(x["part"], x["whole"], x["local"], x["local_points"])
    enc_r = ref.encode(x["part"], x["whole"], x["local"], x["local_points"])
    for o, r in zip(enc_o, enc_r):
        assert relative_error(o, r) <= TOL
    whole_cond, part_cond = enc_r
    assert relative_error(ours.dit(x["latents"], x["t"], part_cond, whole_cond),
                          ref.dit(x["latents"], x["t"], part_cond, whole_cond)) <= TOL
    for g in (3.5, 1.0):  # guided graph, and the no-guidance path
        assert relative_error(ours.guided_step(x["latents"], 700.0, 0.05, g, part_cond, whole_cond),
                              ref.guided_step(x["latents"], 700.0, 0.05, g, part_cond, whole_cond)) <= TOL
    lo = ours.decoder_query(x["points"], ours.decoder_kv(x["latents"]))
    lr = ref.decoder_query(x["points"], ref.decoder_kv(x["latents"]))
    assert lo.shape == lr.shape == (2, 333, 1)
    assert relative_error(lo, lr) <= TOL


def test_variant_sampling_with_shift_matches_torch(variant):
    from holopart_infer.model.sampler import sample

    ours, ref = variant
    shift = float(ours.config["scheduler"]["shift"])
    assert shift == 3.0
    x = _inputs(ours.config, B=3, T=24, seed=1)
    whole_cond, part_cond = ref.encode(x["part"], x["whole"], x["local"], x["local_points"][:, :50])
    noise = x["latents"]
    out = [sample(b.guided_step, noise, part_cond, whole_cond, steps=6, guidance=3.5, shift=shift)
           for b in (ours, ref)]
    assert relative_error(np.asarray(out[0]), np.asarray(out[1])) <= TOL


# --------------------------------------------------------------------------- bad model dirs
@pytest.fixture
def model_copy(tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(exported_model("golden"), dst)
    return dst


def test_missing_model_dir(tmp_path):
    with pytest.raises(InputFileNotFound, match="does not exist"):
        OrtBackend.from_model_dir(tmp_path / "nope")


def test_missing_graph_file(model_copy):
    (model_copy / "onnx" / "vae_query.onnx").unlink()
    with pytest.raises(ModelDirError, match=r"graph 'vae_query'.*vae_query\.onnx is missing"):
        OrtBackend.from_model_dir(model_copy)


def test_truncated_graph_file(model_copy):
    p = model_copy / "onnx" / "dit.onnx"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ModelDirError, match=r"graph 'dit'.*dit\.onnx is corrupt or truncated"):
        OrtBackend.from_model_dir(model_copy)


def test_corrupt_graph_same_size_caught_by_onnxruntime(model_copy):
    """Damage the manifest's size check cannot see: ORT's load error is reported with graph and file."""
    p = model_copy / "onnx" / "vae_kv.onnx"
    raw = bytearray(p.read_bytes())
    raw[:64] = b"\xff" * 64
    p.write_bytes(bytes(raw))
    with pytest.raises(ModelDirError, match=r"sha256"):
        OrtBackend.from_model_dir(model_copy, verify_hashes=True)
    backend = OrtBackend.from_model_dir(model_copy, verify_hashes=False)  # the opt-out: ORT still names it
    with pytest.raises(ModelDirError, match=r"graph 'vae_kv'.*vae_kv\.onnx"):
        backend.decoder_kv(np.zeros((1, 4, backend.config["vae"]["latent_channels"]), np.float32))


def test_other_format_version(model_copy):
    mpath = model_copy / "manifest.json"
    m = json.loads(mpath.read_text())
    m["format_version"] = 99
    mpath.write_text(json.dumps(m))
    with pytest.raises(ModelDirError, match=r"manifest\.json.*format_version 99.*reads format_version 1.*Re-export"):
        OrtBackend.from_model_dir(model_copy)


def test_not_a_model_dir(tmp_path):
    with pytest.raises(ModelDirError, match="manifest.json: missing"):
        OrtBackend.from_model_dir(tmp_path)


# --------------------------------------------------------------------------- bad feeds
@pytest.fixture(scope="module")
def golden_backend():
    return OrtBackend.from_model_dir(exported_model("golden"))


def test_wrong_shape_names_graph_and_tensor(golden_backend):
    b = golden_backend
    C = b.config["transformer"]["in_channels"]
    D = b.config["transformer"]["cross_attention_dim"]
    cond = np.zeros((2, b.num_tokens, D), np.float32)
    bad = np.zeros((2, 10, C + 1), np.float32)
    with pytest.raises(ShapeError, match=rf"graph 'dit': input 'latents' has shape \(2, 10, {C + 1}\), "
                                         rf"expected \(B, T, {C}\) float32"):
        b.dit(bad, np.zeros(2, np.float32), cond, cond)
    with pytest.raises(ShapeError, match=r"graph 'dit': input 'timestep' has shape \(3,\).*B=2 as in input 'latents'"):
        b.dit(np.zeros((2, 10, C), np.float32), np.zeros(3, np.float32), cond, cond)
    with pytest.raises(ShapeError, match=r"graph 'vae_query': input 'points'.*rank 3, got 2"):
        b.decoder_query(np.zeros((5, 3), np.float32), b.decoder_kv(np.zeros((1, 4, C), np.float32)))


def test_wrong_dtype_names_graph_and_tensor(golden_backend):
    b = golden_backend
    C = b.config["transformer"]["in_channels"]
    with pytest.raises(ShapeError, match=r"graph 'vae_kv': input 'latents' has dtype float64, expected float32"):
        b.decoder_kv(np.zeros((1, 4, C), np.float64))
    with pytest.raises(ShapeError, match=r"graph 'part_encoder': input 'whole_points' has dtype float16"):
        K = b.num_tokens
        b.encode(np.zeros((1, K, 6), np.float32), np.zeros((1, 20, 7), np.float16),
                 np.zeros((1, K, 6), np.float32), np.zeros((1, 20, 6), np.float32))


# --------------------------------------------------------------------------- devices
@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has the CUDA provider")
def test_cuda_without_provider_raises_install_hint():
    with pytest.raises(BackendUnavailable, match=r"pip uninstall onnxruntime; pip install onnxruntime-gpu"):
        OrtBackend.from_model_dir(exported_model("golden"), device="cuda")


def test_bad_device(golden_backend):
    from holopart_infer.errors import InputError

    with pytest.raises(InputError, match="device must be"):
        OrtBackend(golden_backend.manifest, device="tpu")


def test_open_backend_onnxruntime():
    from holopart_infer.engines import backend_status, open_backend

    assert backend_status("cpu")["onnxruntime"][0]
    with open_backend(exported_model("golden"), backend="onnxruntime", device="cpu") as b:
        assert (b.name, b.device, b.precision) == ("onnxruntime", "cpu", "fp32")
        assert b.path == exported_model("golden") and b.defaults == {}
    if not HAS_CUDA:
        with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
            open_backend(exported_model("golden"), backend="onnxruntime", device="cuda")
    # ONNX Runtime runs the model dir's precision; another one is refused, not ignored
    with pytest.raises(InputError, match="exported in fp32; ONNX Runtime runs it as it is, not in fp16"):
        open_backend(exported_model("golden"), backend="onnxruntime", precision="fp16")


@requires_cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and an NVIDIA GPU")
def test_cuda_matches_cpu_and_keeps_latents_on_device():
    from holopart_infer.engines.onnxruntime import DeviceArray
    from holopart_infer.model.sampler import sample

    cpu = OrtBackend.from_model_dir(exported_model("variant"))
    gpu = OrtBackend.from_model_dir(exported_model("variant"), device="cuda")
    x = _inputs(cpu.config, B=2, T=24)
    wc, pc = cpu.encode(x["part"], x["whole"], x["local"], x["local_points"])
    step = gpu.guided_step(x["latents"], 500.0, 0.1, 3.5, pc, wc)
    assert isinstance(step, DeviceArray) and "cuda" in step.value.device_name().lower()
    out = [np.asarray(sample(b.guided_step, x["latents"], pc, wc, steps=4, guidance=3.5)) for b in (cpu, gpu)]
    assert relative_error(out[1], out[0]) <= 1e-3
    kv = gpu.decoder_kv(out[1])
    assert isinstance(kv[0], DeviceArray)
    assert relative_error(gpu.decoder_query(x["points"], kv),
                          cpu.decoder_query(x["points"], cpu.decoder_kv(out[1]))) <= 1e-3


@pytest.mark.parametrize("guidance", [1.0, 3.5])
def test_embedded_demo_model_matches_its_recipe_and_torch(guidance):
    """The shipped demo model is the export of the shipped holopart-mini checkpoint
    (export/make_demo_model.py): the manifest names that checkpoint's files by hash,
    carries its inference defaults, and its guided step (with and without guidance)
    equals the faithful torch model's on that checkpoint."""
    import json

    from holopart_infer.export.make_demo_model import MINI_CHECKPOINT
    from holopart_infer.export.torch_backend import TorchBackend
    from holopart_infer import assets
    from holopart_infer.fsafe import sha256_file
    from holopart_infer.model.manifest import load_manifest

    m = load_manifest(assets.demo_model_path(), verify_hashes=True)
    assert m.source["sha256"] == {f: sha256_file(MINI_CHECKPOINT / f) for f in m.source["sha256"]}
    assert "transformer/diffusion_pytorch_model.safetensors" in m.source["sha256"]
    index = json.loads((MINI_CHECKPOINT / "model_index.json").read_text())
    assert m.defaults == index["inference_defaults"] and m.defaults["latent_tokens"] == 64
    ort_b = OrtBackend.from_model_dir(assets.demo_model_path())
    ref = TorchBackend.from_checkpoint(MINI_CHECKPOINT)
    rng = np.random.default_rng(1)
    K, D = ort_b.num_tokens, ref.nets.part_encoder.cfg.dim
    x = rng.standard_normal((2, 48, ort_b.latent_channels), dtype=np.float32)
    pc, wc = (rng.standard_normal((2, K, D), dtype=np.float32) for _ in range(2))
    got = np.asarray(ort_b.guided_step(x, 700.0, 0.02, guidance, pc, wc))
    assert relative_error(got, ref.guided_step(x, 700.0, 0.02, guidance, pc, wc)) < 1e-5
