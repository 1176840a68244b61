"""The C attention kernel (hear_msm_mae/kernels/attention.c, built by native.py) against float64 attention and
the torch paths; its build, cache and fallbacks."""
import ctypes
import shutil

import pytest
import torch
import torch.nn.functional as F

from hear_msm_mae import attention as kernels
from hear_msm_mae import native
from hear_msm_mae.attention import attention, native_attention, relative_gate
from hear_msm_mae.encoders.wav2vec2 import Wav2Vec2Config, Wav2Vec2Encoder


def cpu_flags() -> set:
    """The CPU's flags as Linux lists them (none elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(line for line in f if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return set()


# The kernel runs where the CPU multiplies bfloat16 pairs (and torch uses AVX-512) and a C compiler is installed
# (the Makefile installs gcc); elsewhere kernels() is
# None (test_kernels_are_built_exactly_where_the_cpu_and_a_compiler_allow) and the torch paths run.
HERE = "avx512_bf16" in cpu_flags() and native.cpu_may_support() and native.compiler() is not None
needs_kernels = pytest.mark.skipif(not HERE, reason="no AVX512-BF16 CPU or no C compiler on this machine")


def test_kernels_are_built_exactly_where_the_cpu_and_a_compiler_allow():
    assert (native.kernels() is not None) == HERE


def qkv_views(n, heads, tokens, d, seed=0, scale=2.0):
    """q, k, v as the encoders make them: (n, heads, L, d) views of one (n, L, 3 heads d) product."""
    g = torch.Generator().manual_seed(seed)
    qkv = (scale * torch.randn(n, tokens, 3 * heads * d, generator=g)).bfloat16()
    return qkv.view(n, tokens, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)


def exact(q, k, v, bias=None, gate=None):
    scores = q.double() @ k.double().transpose(-1, -2) * q.shape[-1] ** -0.5
    if bias is not None:
        scores = scores + bias.double() * (1.0 if gate is None else gate.double())
    return scores.softmax(-1) @ v.double()


@needs_kernels
@pytest.mark.parametrize("n, heads, tokens, d", [(1, 1, 1, 64), (2, 3, 2, 64), (3, 2, 17, 64), (2, 12, 65, 64),
                                                 (1, 2, 64, 128), (2, 4, 300, 64)])
@pytest.mark.parametrize("with_bias, with_gate", [(False, False), (True, False), (True, True)])
def test_the_kernel_is_float64_attention_within_bfloat16_rounding(n, heads, tokens, d, with_bias, with_gate):
    """Every length class (one key; fewer than, exactly, just over one block of 16 keys; several blocks; an odd
    tail), head sizes 64 and 128, the bias per batch or broadcast, the gate per query: within a bfloat16 rounding
    of float64 attention, and closer to it than the torch paths for bfloat16 (scores rounded to bfloat16)."""
    q, k, v = qkv_views(n, heads, tokens, d, seed=tokens)
    g = torch.Generator().manual_seed(1)
    bias = (3 * torch.randn(heads, tokens, tokens, generator=g)).bfloat16() if with_bias else None
    gate = (2 * torch.rand(n, heads, tokens, 1, generator=g)).bfloat16() if with_gate else None
    with torch.inference_mode():
        out = native_attention(q, k, v, bias, gate)
        kernels.NATIVE_CPU_ATTENTION = False
        try:
            torch_paths = attention(q, k, v, bias, gate)
        finally:
            kernels.NATIVE_CPU_ATTENTION = True
    assert out is not None and out.shape == (n, heads, tokens, d) and out.dtype == torch.bfloat16
    assert out.transpose(1, 2).is_contiguous()  # laid out as (n, L, heads, d): the output projection reads it
    truth = exact(q, k, v, bias, gate)
    error = (out.double() - truth).abs().max().item()
    assert error <= 2 ** -8 * truth.abs().max().item() + 2e-3, error
    if tokens > 1:
        assert error <= (torch_paths.double() - truth).abs().max().item()


@needs_kernels
def test_one_key_gives_its_value_and_a_huge_bias_selects_one_key():
    q, k, v = qkv_views(2, 3, 1, 64)
    with torch.inference_mode():
        assert torch.equal(native_attention(q, k, v), v)
        q, k, v = qkv_views(1, 2, 40, 64)
        bias = torch.full((2, 40, 40), -1e4).bfloat16()
        bias[:, torch.arange(40), (torch.arange(40) * 7) % 40] = 0  # query i sees only key 7 i mod 40
        out = native_attention(q, k, v, bias)
    assert torch.equal(out, v[:, :, (torch.arange(40) * 7) % 40])


@needs_kernels
def test_a_clip_is_the_same_whatever_its_batch_mates_and_the_threads():
    q, k, v = qkv_views(4, 12, 65, 64)
    bias = torch.randn(12, 65, 65).bfloat16()
    gate = torch.rand(4, 12, 65, 1).bfloat16()
    threads = torch.get_num_threads()
    with torch.inference_mode():
        whole = native_attention(q, k, v, bias, gate)
        alone = native_attention(q[2:3], k[2:3], v[2:3], bias, gate[2:3])
        torch.set_num_threads(1)
        try:
            one_thread = native_attention(q, k, v, bias, gate)
        finally:
            torch.set_num_threads(threads)
    assert torch.equal(alone, whole[2:3]) and torch.equal(one_thread, whole)


@needs_kernels
def test_attention_takes_the_kernel_for_bfloat16_inference_only():
    q, k, v = qkv_views(2, 2, 65, 64)
    with torch.inference_mode():
        assert torch.equal(attention(q, k, v), native_attention(q, k, v))
    grad = tuple(x.detach().clone().requires_grad_() for x in (q, k, v))
    out = attention(*grad)  # gradients recorded: the torch paths, whose backward exists
    out.float().sum().backward()
    assert all(x.grad is not None for x in grad)


@needs_kernels
def test_inputs_the_kernel_does_not_take_are_refused():
    q, k, v = qkv_views(1, 2, 20, 32)
    assert native_attention(q, k, v) is None  # head size not a multiple of 64
    q, k, v = qkv_views(1, 2, 20, 64)
    assert native_attention(q.float(), k.float(), v.float()) is None
    assert native_attention(q.transpose(-1, -2), k, v) is None  # rows not contiguous
    odd = torch.randn(1, 20, 3 * 128 + 1).bfloat16()[..., 1:].view(1, 20, 3, 2, 64).permute(2, 0, 3, 1, 4)
    assert native_attention(*odd) is None  # q and k not 4-byte aligned
    bias = torch.randn(2, 20, 20).bfloat16().transpose(-1, -2)
    assert native_attention(q, k, v, bias) is None  # bias rows not contiguous
    with pytest.raises(ValueError, match="a gate needs a bias"):
        attention(q, k, v, None, torch.ones(1, 2, 20, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_gate_multiplies_each_querys_row_of_the_bias_on_every_path(dtype):
    q, k, v = (x.to(dtype) for x in qkv_views(2, 3, 30, 16))
    g = torch.Generator().manual_seed(3)
    table = torch.randn(3, 30, 30, generator=g, dtype=dtype)
    gate = relative_gate(torch.randn(2, 3, 30, 8, generator=g, dtype=dtype), torch.rand(1, 3, 1, 1, dtype=dtype))
    buffer = torch.empty(2, 3, 30, 30, dtype=dtype)
    with torch.no_grad():
        out = attention(q, k, v, table, gate, buffer=buffer)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=gate * table)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(buffer, gate * table)  # where a path needs the gated bias whole, it is written here


@needs_kernels
def test_a_gated_relative_encoder_in_bfloat16_is_the_same_with_and_without_the_kernel():
    """WavLM's blocks (head size 64, gated relative bias) through the kernel and through the torch paths."""
    config = Wav2Vec2Config(conv_layers=((64, 10, 5), (64, 3, 2)), embed_dim=128, num_layers=2, num_heads=2,
                            ffn_dim=256, pos_conv_kernel=8, pos_conv_groups=4, num_buckets=32, max_distance=64)
    torch.manual_seed(0)
    encoder = Wav2Vec2Encoder(config).eval()
    exact_encoder = Wav2Vec2Encoder(config).eval().double()
    exact_encoder.load_state_dict(encoder.state_dict())
    encoder = encoder.bfloat16()
    waves = torch.randn(2, 1, 1, 4000)
    with torch.inference_mode():
        truth = exact_encoder.encode(waves.double(), layers=[2])[0]
        with_kernel = encoder.encode(waves.bfloat16(), layers=[2])[0]
        kernels.NATIVE_CPU_ATTENTION = False
        try:
            without = encoder.encode(waves.bfloat16(), layers=[2])[0]
        finally:
            kernels.NATIVE_CPU_ATTENTION = True
    cosine = lambda a: F.cosine_similarity(a.double(), truth, dim=-1).min().item()
    assert cosine(with_kernel) > 0.9999 and cosine(with_kernel) >= cosine(without) - 1e-5
    assert not torch.equal(with_kernel, without)  # the kernel did run


def test_the_switch_and_a_failed_build_leave_the_torch_paths(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_loaded", None)
    monkeypatch.setenv(native.SWITCH, "0")
    assert native.kernels() is None
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setenv(native.SWITCH, "1")
    monkeypatch.setenv("HEAR_MSM_MAE_HOME", str(tmp_path))
    monkeypatch.setattr(native, "cpu_may_support", lambda: True)
    monkeypatch.setenv("CC", "false")  # a compiler that fails
    monkeypatch.setattr(native, "compiler", lambda: shutil.which("false"))
    with pytest.warns(UserWarning, match="C kernels are not available.*failed on attention.c"):
        assert native.kernels() is None
    assert not list((tmp_path / "kernels").iterdir())  # nothing half-written is left
    q, k, v = qkv_views(1, 2, 65, 64)
    with torch.inference_mode():
        assert native_attention(q, k, v) is None and attention(q, k, v).shape == q.shape


@pytest.mark.skipif(native.compiler() is None, reason="no C compiler on this machine")
def test_a_build_is_kept_under_the_source_hash_and_reused(tmp_path):
    source = tmp_path / "tiny.c"
    source.write_text("int answer(void) { return 42; }\n")
    first = native.build(source, tmp_path / "out")
    stamp = first.stat().st_mtime_ns
    assert native.build(source, tmp_path / "out") == first and first.stat().st_mtime_ns == stamp
    source.write_text("int answer(void) { return 43; }\n")
    second = native.build(source, tmp_path / "out")
    assert second != first and sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([first.name, second.name])
    assert ctypes.CDLL(str(second)).answer() == 43
    source.write_text("int answer(void) { return }\n")
    with pytest.raises(RuntimeError, match="failed on tiny.c"):
        native.build(source, tmp_path / "out")
    assert len(list((tmp_path / "out").iterdir())) == 2
