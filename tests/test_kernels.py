"""The CPU inference kernels against the plain operations a GPU (or training) runs, on the CPU."""
import contextlib
import copy
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from hear_msm_mae.precision import fast_dtype, resolve_dtype
from hear_msm_mae.linear import Linear, can_pack, pack, packed_weight
from hear_msm_mae import attention as kernels
from hear_msm_mae.attention import SHORT_ATTENTION_TOKENS, FusedAttention, attention
from hear_msm_mae.conv import (SpectralWeights, conv1d_by_fft, conv_matrix, fft_size, frames_product,
                               group_norm_folded, long_conv1d, strided_frames, transform_size)
from hear_msm_mae.encoders import wav2vec2 as wav2vec2_encoder
from hear_msm_mae.encoders.vit import Block
from hear_msm_mae.encoders.wav2vec2 import Wav2Vec2Config, Wav2Vec2Encoder

@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_packed_linear_equals_the_separate_operations(dtype, tol):
    torch.manual_seed(0)
    layer = Linear(96, 160).to(dtype)
    x, residual = torch.randn(3, 7, 96, dtype=dtype), torch.randn(3, 7, 160, dtype=dtype)
    with torch.no_grad():
        plain = [layer(x), layer(x, activation="gelu"), layer(x, residual=residual)]
        expected = [F.linear(x, layer.weight, layer.bias), F.gelu(F.linear(x, layer.weight, layer.bias)),
                    F.linear(x, layer.weight, layer.bias) + residual]
        layer.pack()
        packed = [layer(x), layer(x, activation="gelu"), layer(x, residual=residual)]
    for a, b, c in zip(plain, expected, packed):
        assert torch.equal(a, b)
        torch.testing.assert_close(c.float(), b.float(), rtol=tol, atol=tol)


def test_packing_a_block_changes_nothing_in_it():
    """pack() only lets the block keep oneDNN layouts: the same parameters, state dict and outputs (MSM-MAE's
    query/value biases stay two parameters, the zero key bias between them made at each call)."""
    torch.manual_seed(0)
    block = Block(64, 4, 4.0, qkv_bias="qv").eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.2)
        x = torch.randn(2, 9, 64)
        expected = block(x)
        state = {k: v.clone() for k, v in block.state_dict().items()}
        pack(block)
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
    assert block.attn.qkv.packed.value is not None  # the call went through oneDNN's product
    assert block.state_dict().keys() == state.keys() and block.attn.qkv.bias is None
    assert all(torch.equal(block.state_dict()[k], v) for k, v in state.items())


def test_a_packed_layout_follows_its_weight():
    """Remade after every change of the weight: in place, load_state_dict, .to(); not used where it would not
    compute the same (float64, gradients recorded)."""
    torch.manual_seed(0)
    layer, x = Linear(32, 48), torch.randn(5, 32)
    layer.pack()

    def check(x, **kwargs):
        with torch.no_grad():
            torch.testing.assert_close(layer(x, **kwargs), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)

    check(x)
    first = layer.packed.value
    check(x)
    assert layer.packed.value is first  # unchanged weight: the same layout
    with torch.no_grad():
        layer.weight.mul_(-2.0)  # in place
    check(x)
    layer.load_state_dict({"weight": torch.randn(48, 32), "bias": torch.randn(48)})
    check(x)
    layer.to(torch.float64)  # oneDNN does not multiply float64: F.linear
    check(x.double())
    layer.to(torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(layer(x.bfloat16()).float(), F.linear(x, layer.weight.float(), layer.bias.float()),
                                   rtol=3e-2, atol=3e-2)
    layer.float()
    out = layer(x, activation="gelu")  # gradients recorded: the separate operations, whose backward exists
    out.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_gradients_reach_every_weight_of_a_packed_block():
    torch.manual_seed(0)
    block = Block(64, 4, 4.0, qkv_bias="qv")
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.2)
    unpacked = copy.deepcopy(block)
    pack(block)
    x = torch.randn(2, 9, 64)
    for b in (block, unpacked):
        b(x).square().sum().backward()
    for (name, p), q in zip(block.named_parameters(), unpacked.parameters()):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def qkv(n, heads, tokens, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, heads, tokens, d, generator=g).to(dtype) for _ in range(3))


@pytest.mark.parametrize("tokens", [5, SHORT_ATTENTION_TOKENS, SHORT_ATTENTION_TOKENS + 1, 300])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_attention_equals_sdpa_short_and_long(tokens, dtype, tol):
    """On the CPU short sequences take two products and a softmax, long bf16 ones oneDNN Graph's fused kernel;
    SDPA (what a GPU runs) agrees."""
    q, k, v = qkv(2, 3, tokens, 16, dtype)
    with torch.no_grad():
        torch.testing.assert_close(attention(q, k, v).float(), F.scaled_dot_product_attention(q, k, v).float(),
                                   rtol=tol, atol=tol)


def llga_partitions(run) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("LlgaPartition"))


@pytest.mark.parametrize("with_bias", [False, True])
def test_long_bfloat16_attention_is_one_fused_onednn_kernel(with_bias, monkeypatch):
    """CPU bf16 inference beyond SHORT_ATTENTION_TOKENS where the C kernel does not run: one oneDNN Graph
    partition per call, computing what the products compute (scores rounded to bf16, as a bf16 product leaves
    them; a float32 softmax), close to float32 attention."""
    monkeypatch.setattr(kernels, "NATIVE_CPU_ATTENTION", False)
    tokens = 2 * SHORT_ATTENTION_TOKENS + 3
    q, k, v = qkv(2, 4, tokens, 64, torch.bfloat16, seed=1)
    bias = torch.randn(2, 4, tokens, tokens, generator=torch.Generator().manual_seed(2)).bfloat16() if with_bias \
        else None
    with torch.no_grad():
        first = attention(q, k, v, bias)
        assert llga_partitions(lambda: attention(q, k, v, bias)) == 1
        fused = attention(q, k, v, bias)
        assert torch.equal(fused, first)  # a layout's first call is fused too: no call depends on what came before
        alone = attention(q[:1], k[:1], v[:1], None if bias is None else bias[:1])
        assert torch.equal(alone, fused[:1])  # nor on its batch-mates
        scores = torch.matmul(q, k.transpose(-1, -2)) * 64 ** -0.5  # bf16, as the fused graph states it
        scores = scores + bias if with_bias else scores
        products = torch.matmul(scores.float().softmax(-1).bfloat16(), v)
        exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                               attn_mask=None if bias is None else bias.float())
    torch.testing.assert_close(fused.float(), products.float(), rtol=2e-2, atol=2e-2)
    assert F.cosine_similarity(fused.float().flatten(1), exact.flatten(1)).min() > 0.9999
    assert not torch._C._jit_llga_enabled()  # torch.jit's process-wide switch is left as it was


def test_fused_attention_compiles_a_bounded_number_of_layouts_and_training_uses_sdpa():
    fused = FusedAttention(max_layouts=2)
    with torch.no_grad():
        for tokens in (130, 150, 170, 130, 150, 170):
            q, k, v = qkv(1, 2, tokens, 32, torch.bfloat16, seed=tokens)
            out = fused(q, k, v, None)
            if tokens == 170:  # over the budget: SDPA itself
                assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))
            else:
                assert llga_partitions(lambda: fused(q, k, v, None)) == 1
                torch.testing.assert_close(out.float(), F.scaled_dot_product_attention(
                    q.float(), k.float(), v.float()), rtol=3e-2, atol=3e-2)
    assert [key[0][0][-2] for key in fused.graphs] == [130, 150]
    q, k, v = (x.requires_grad_() for x in qkv(1, 2, 300, 32, torch.bfloat16))
    before = len(kernels.FUSED.graphs)
    attention(q, k, v).float().sum().backward()  # gradients recorded: SDPA, whose backward exists
    assert q.grad is not None and len(kernels.FUSED.graphs) == before


def test_fused_attention_that_fails_falls_back_to_sdpa_for_good(monkeypatch):
    fused = FusedAttention()
    def broken_trace(*args, **kwargs):
        raise RuntimeError("no oneDNN Graph in this build")
    monkeypatch.setattr(torch.jit, "trace", broken_trace)
    q, k, v = qkv(1, 2, 200, 32, torch.bfloat16)
    with torch.no_grad(), pytest.warns(UserWarning, match="no oneDNN Graph in this build"):
        out = fused(q, k, v, None)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v)) and not fused.available


@pytest.mark.parametrize("capability, expected", [((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16),
                                                  ((7, 5), torch.float16), ((7, 0), torch.float16),
                                                  ((6, 1), torch.float32)])
def test_auto_dtype_on_gpus(capability, expected):
    with mock.patch("torch.cuda.get_device_capability", return_value=capability):
        assert fast_dtype(torch.device("cuda", 0)) == expected
        assert resolve_dtype("auto", torch.device("cuda", 0)) == expected
        assert resolve_dtype("float32", torch.device("cuda", 0)) == torch.float32
    assert not can_pack(torch.device("cuda", 0))  # the GPU keeps the separate operations


@pytest.mark.parametrize("channels, groups, kernel, padding, length", [(768 // 8, 16 // 8, 128, 64, 504 // 4),
                                                                      (12, 3, 5, 2, 31), (8, 1, 4, 0, 9),
                                                                      (6, 6, 7, 5, 1)])
def test_convolution_by_fft_is_the_direct_convolution(channels, groups, kernel, padding, length):
    g = torch.Generator().manual_seed(kernel)
    x = torch.randn(3, channels, length, generator=g, dtype=torch.float64)
    weight = torch.randn(channels, channels // groups, kernel, generator=g, dtype=torch.float64) / kernel
    bias = torch.randn(channels, generator=g, dtype=torch.float64)
    exact = F.conv1d(x, weight, bias, padding=padding, groups=groups)
    spectra = SpectralWeights()
    out = conv1d_by_fft(x.float(), weight.float(), bias.float(), padding, groups, spectra)
    assert out.dtype == torch.float32 and out.shape == exact.shape
    assert (out.double() - exact).abs().max() <= 1e-5 * exact.abs().max()
    bf16 = conv1d_by_fft(x.bfloat16(), weight.bfloat16(), bias.bfloat16(), padding, groups, spectra)
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.double(), exact, rtol=2e-2, atol=2e-2 * exact.abs().max().item())


def test_weight_spectra_are_kept_for_the_sizes_used_last_and_remade_when_the_weight_changes():
    weight, spectra = torch.randn(4, 2, 8), SpectralWeights(max_sizes=2)
    first = spectra.get(weight, 2, 16)
    assert first.shape == (9, 2, 2, 2) and spectra.get(weight, 2, 16) is first
    spectra.get(weight, 2, 30)
    assert spectra.get(weight, 2, 16) is first  # both sizes kept
    spectra.get(weight, 2, 40)  # a third: the one used longest ago (30) goes
    assert [key[0] for key in spectra.cache] == [16, 40]
    weight.mul_(2)  # the same tensor, changed in place
    torch.testing.assert_close(spectra.get(weight, 2, 16), 2 * first)
    assert len(spectra.cache) == 1
    with torch.inference_mode():
        frozen = weight.clone()  # an inference tensor: no version counter to key on
        kept = spectra.get(frozen, 2, 16)
        frozen.mul_(2)
        torch.testing.assert_close(spectra.get(frozen, 2, 16), 2 * kept)  # made afresh, never stale


def test_fft_sizes_are_the_smallest_smooth_numbers():
    smooth = [n for n in range(1, 700) if all(p in (2, 3, 5) for p in prime_factors(n))]
    for n in range(1, 650):
        assert fft_size(n) == min(m for m in smooth if m >= n)
        assert transform_size(n) == 64 * min(m for m in smooth if 64 * m >= n)


def prime_factors(n):
    p, out = 2, []
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


def test_a_long_convolution_runs_by_fft_for_cpu_inference_and_as_the_module_when_training():
    conv = torch.nn.Conv1d(8, 8, 16, padding=8, groups=2)
    x, spectra = torch.randn(2, 8, 40), SpectralWeights()
    with torch.no_grad():
        fast = long_conv1d(conv, x, spectra)
        torch.testing.assert_close(fast, conv(x), rtol=1e-5, atol=1e-5)
    assert len(spectra.cache) == 1
    trained = long_conv1d(conv, x, SpectralWeights())
    assert trained.grad_fn is not None and torch.equal(trained, conv(x))  # the module's own kernel and backward


def test_a_weight_normed_convolution_keeps_its_spectra_until_its_stored_parts_change():
    """torch's weight norm recomputes the weight at every access (torchaudio's wav2vec 2.0 position conv):
    its spectra are keyed on the direction and magnitude it is computed from."""
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(8, 8, 16, padding=8, groups=2), dim=2)
    x, spectra = torch.randn(2, 8, 40), SpectralWeights()
    with torch.no_grad():
        first = long_conv1d(conv, x, spectra)
        kept = next(iter(spectra.cache.values()))
        torch.testing.assert_close(first, conv(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(long_conv1d(conv, x, spectra), first, rtol=0, atol=0)
        assert len(spectra.cache) == 1 and next(iter(spectra.cache.values())) is kept  # not made again
        conv.parametrizations.weight.original0.mul_(3)  # the magnitude, in place
        torch.testing.assert_close(long_conv1d(conv, x, spectra), conv(x), rtol=1e-5, atol=1e-5)
        assert len(spectra.cache) == 1 and next(iter(spectra.cache.values())) is not kept


@pytest.mark.parametrize("kernel, stride, bias", [(10, 5, False), (4, 4, True), (3, 1, True)])
def test_a_convolution_of_one_channel_is_a_product_with_the_frames(kernel, stride, bias):
    """With the module's weight for every input, and with a weight of its own per input."""
    conv = torch.nn.Conv1d(1, 16, kernel, stride=stride, bias=bias).double()
    x = torch.randn(3, 1, 101, dtype=torch.float64)
    with torch.no_grad():
        weight, shift = conv.weight[:, 0].expand(3, -1, -1), None if conv.bias is None else conv.bias.expand(3, -1)
        torch.testing.assert_close(frames_product(x, weight, shift, stride),
                                   F.conv1d(x, conv.weight, conv.bias, stride=stride).transpose(1, 2),
                                   rtol=1e-12, atol=1e-12)
        factors = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
        out = frames_product(x, factors[:, None, None] * weight, None, stride)
        for i, factor in enumerate(factors):
            torch.testing.assert_close(out[i], F.conv1d(x[i], factor * conv.weight, stride=stride).T,
                                       rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel, stride", [(3, 2), (2, 2), (4, 1), (1, 3)])
def test_a_convolution_of_channels_last_frames_is_a_matrix_product(kernel, stride):
    """conv(x) = strided_frames(x) times conv_matrix(conv.weight): frames that overlap, tile, or skip input frames, and
    an input that is a slice of a larger tensor (an offset into its storage)."""
    conv = torch.nn.Conv1d(6, 5, kernel, stride=stride).double()
    x = torch.randn(3, 23, 6, dtype=torch.float64)[:, 2:]  # (n, T, C), (T, C) contiguous, offset
    with torch.no_grad():
        out = F.linear(strided_frames(x, kernel, stride), conv_matrix(conv.weight), conv.bias)
        torch.testing.assert_close(out, conv(x.transpose(1, 2)).transpose(1, 2), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="contiguous"):
        strided_frames(x.transpose(1, 2), kernel, stride)
    with pytest.raises(ValueError, match="shorter than the kernel"):
        strided_frames(x[:, :kernel - 1], kernel, stride)


@pytest.mark.parametrize("affine", [True, False])
def test_a_per_channel_group_norm_folds_into_the_convolution_before_it(affine):
    """norm(conv(x)) from the frames' statistics, per input: with an offset in the input (its mean enters the
    norm), the conv's bias (which the norm cancels), statistics gathered over blocks of frames."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(1, 16, 10, stride=5).double()
    norm = torch.nn.GroupNorm(16, 16, affine=affine).double()
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 2.0)
            norm.bias.normal_()
    x = torch.randn(2, 1, 4000, dtype=torch.float64) * torch.tensor([1.0, 0.01], dtype=torch.float64)[:, None, None]
    x += torch.tensor([3.0, -0.5], dtype=torch.float64)[:, None, None]
    with torch.no_grad():
        weight, shift = group_norm_folded(conv, norm, x, block=100)
        torch.testing.assert_close(frames_product(x, weight, shift, 5), norm(conv(x)).transpose(1, 2), rtol=1e-9,
                                   atol=1e-9)
        with pytest.raises(ValueError, match="one group per channel"):
            group_norm_folded(conv, torch.nn.GroupNorm(4, 16), x)


def test_a_shorter_input_reuses_kept_spectra_up_to_twice_its_size():
    """A clip's last unit takes the spectra of its full units (one size kept, not two) when they are at most
    twice the size it needs, and gives the direct convolution's result."""
    conv = torch.nn.Conv1d(8, 8, 16, padding=8, groups=2)
    spectra = SpectralWeights()
    with torch.no_grad():
        for length in (300, 200, 40):  # sizes needed: 320, 256 (320 kept, reused), 64 (more than twice: its own)
            x = torch.randn(2, 8, length)
            torch.testing.assert_close(conv1d_by_fft(x, conv.weight, conv.bias, 8, 2, spectra), conv(x),
                                       rtol=1e-5, atol=1e-5)
            assert [key[0] for key in spectra.cache] == {300: [320], 200: [320], 40: [320, 64]}[length]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("mode", ["group_norm", "layer_norm"])
def test_the_feature_encoder_window_by_window_is_the_modules_over_the_whole_input(mode, packed, monkeypatch):
    """Windows of 7 frames, 3 per call (so calls mix inputs, and each input ends in a partial window), against
    torchaudio's modules over each whole input (float64): the Base layout's GroupNorm (folded) sees every frame.
    Unpacked in float64; packed (oneDNN's products, GELU inside) in float32, as load_model prepares the CPU."""
    torch.manual_seed(0)
    config = Wav2Vec2Config(conv_layers=((16, 10, 5), (16, 3, 2), (16, 2, 2)), extractor_mode=mode,
                            conv_bias=mode == "layer_norm", embed_dim=32, num_layers=1, num_heads=2, ffn_dim=64,
                            pos_conv_kernel=8, pos_conv_groups=4)
    encoder = Wav2Vec2Encoder(config).double()
    with torch.no_grad():
        for p in encoder.feature_extractor.parameters():
            p.normal_()  # norms' scales and shifts too
    windowed_encoder = pack(copy.deepcopy(encoder).float()) if packed else encoder
    assert (windowed_encoder.conv_layouts is not None) == packed
    monkeypatch.setattr(wav2vec2_encoder, "FEATURE_WINDOW", 7)
    monkeypatch.setattr(wav2vec2_encoder, "WINDOWS_PER_CALL", 3)
    assert (config.receptive_field, config.hop) == (30, 20)
    waves = 2.0 + torch.randn(3, 30 + 20 * 40 + 13, dtype=torch.float64)  # 41 frames, 13 samples left over
    with torch.no_grad():
        with contextlib.ExitStack() as modules:
            for layer in windowed_encoder.feature_extractor.conv_layers:
                modules.enter_context(mock.patch.object(layer.conv, "forward",
                                                        side_effect=AssertionError("a module ran")))
            windowed = windowed_encoder.features(waves.to(next(windowed_encoder.parameters()).dtype))
        monkeypatch.setattr(wav2vec2_encoder, "WINDOWED_FEATURES", False)  # the benchmarks' switch
        whole = encoder.features(waves)
    assert windowed.shape == whole.shape == (3, 41, 16)
    tolerance = 1e-5 * float(whole.abs().max()) if packed else 1e-10
    torch.testing.assert_close(windowed.double(), whole, rtol=tolerance, atol=tolerance)


def test_the_feature_encoders_layouts_are_made_once_and_again_when_a_weight_changes(monkeypatch):
    """The convolutions' oneDNN layouts are keyed on the conv weights: not remade at every call (they were, under
    torch.inference_mode(), 18 times a WavLM call), remade after a weight changes."""
    torch.manual_seed(0)
    config = Wav2Vec2Config(conv_layers=((16, 10, 5), (16, 3, 2), (16, 2, 2)), embed_dim=32, num_layers=1,
                            num_heads=2, ffn_dim=64, pos_conv_kernel=8, pos_conv_groups=4)
    made = []
    monkeypatch.setattr(wav2vec2_encoder, "packed_weight", lambda w: made.append(w.shape) or packed_weight(w))
    encoder = pack(Wav2Vec2Encoder(config).eval())
    waves = torch.randn(2, 30 + 20 * 40)
    with torch.inference_mode():
        first = encoder.features(waves)
        for _ in range(3):
            assert torch.equal(encoder.features(waves), first)
    assert len(made) == 2  # the two convolutions after the first, once
    with torch.no_grad():
        encoder.feature_extractor.conv_layers[2].conv.weight.mul_(2)
    with torch.inference_mode():
        changed = encoder.features(waves)
    assert len(made) == 4 and not torch.equal(changed, first)


@pytest.mark.parametrize("layer_norm_first", [False, True])
@pytest.mark.parametrize("relative", [False, True])
def test_the_waveform_blocks_add_and_norm_a_wider_stream_outside_their_products(layer_norm_first, relative):
    """A block whose products compute in float32 given a float64 stream (the float32-stream path that bfloat16
    models take) against the same block in float64 (residual adds inside the products): equal within float32
    rounding, post-LN and pre-LN, with and without WavLM's gated relative bias; and a bfloat16 encoder's
    every layer (0, the blocks, the pre-LN final norm) comes out in float32, near the float64 encoder's."""
    torch.manual_seed(0)
    config = Wav2Vec2Config(conv_layers=((16, 10, 5), (16, 3, 2)), embed_dim=32, num_layers=2, num_heads=2,
                            ffn_dim=64, pos_conv_kernel=8, pos_conv_groups=4, layer_norm_first=layer_norm_first,
                            num_buckets=8 if relative else 0, max_distance=16 if relative else 0)
    wide = Wav2Vec2Encoder(config).double()
    with torch.no_grad():
        for name, p in wide.named_parameters():
            if "norm" in name:
                p.normal_()  # the norms' weights cast to the stream's dtype
    narrow = copy.deepcopy(wide).float()
    x = torch.randn(2, 20, 32, dtype=torch.float64)
    with torch.no_grad():
        bias_wide = bias_narrow = None
        for layer_wide, layer_narrow in zip(wide.encoder.transformer.layers, narrow.encoder.transformer.layers):
            expected, bias_wide = wav2vec2_encoder.block(layer_wide, x, bias_wide)
            out, bias_narrow = wav2vec2_encoder.block(layer_narrow, x, bias_narrow)
            assert out.dtype == torch.float64
            torch.testing.assert_close(out, expected, rtol=2e-5, atol=2e-5)
            x = expected
        waves = torch.randn(2, 30 + 20 * 24)
        reference = wide.encode(waves.double()[:, None, None], layers=[0, 1, 2])
        low = copy.deepcopy(wide).bfloat16().encode(waves.bfloat16()[:, None, None], layers=[0, 1, 2])
    for a, b in zip(low, reference):
        assert a.dtype == torch.float32
        assert float(F.cosine_similarity(a.double(), b, dim=-1).min()) > 0.99
