"""The CPU inference kernels against the plain operations a GPU (or training) runs, on the CPU."""
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from hear_msm_mae.precision import fast_dtype, resolve_dtype
from hear_msm_mae.linear import Linear, can_pack, pack
from hear_msm_mae.encoders.vit import SHORT_ATTENTION_TOKENS, Block, attention

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


def test_packing_a_block_fuses_msm_mae_query_value_biases():
    torch.manual_seed(0)
    block = Block(64, 4, 4.0, qkv_bias="qv").eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.2)
        x = torch.randn(2, 9, 64)
        expected = block(x)
        pack(block)
        assert block.attn.qkv.bias is not None and not block.attn.qkv.bias.requires_grad
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tokens", [5, SHORT_ATTENTION_TOKENS, SHORT_ATTENTION_TOKENS + 1, 300])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_attention_equals_sdpa_short_and_long(tokens, dtype, tol):
    """On the CPU short sequences take two products and a softmax; SDPA (what a GPU runs) agrees."""
    q, k, v = (torch.randn(2, 3, tokens, 16, generator=torch.Generator().manual_seed(i)).to(dtype) for i in range(3))
    torch.testing.assert_close(attention(q, k, v).float(), F.scaled_dot_product_attention(q, k, v).float(),
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("capability, expected", [((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16),
                                                  ((7, 5), torch.float16), ((7, 0), torch.float16),
                                                  ((6, 1), torch.float32)])
def test_auto_dtype_on_gpus(capability, expected):
    with mock.patch("torch.cuda.get_device_capability", return_value=capability):
        assert fast_dtype(torch.device("cuda", 0)) == expected
        assert resolve_dtype("auto", torch.device("cuda", 0)) == expected
        assert resolve_dtype("float32", torch.device("cuda", 0)) == torch.float32
    assert not can_pack(torch.device("cuda", 0))  # the GPU keeps the separate operations
