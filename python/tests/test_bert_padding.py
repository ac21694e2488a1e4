# flash_attn.bert_padding (API.md §6): unpad/pad round trips, the 5-tuple with unused_mask, the
# autograd Functions' gradients, concatenated sequences.
import torch

from flash_attn.bert_padding import (index_first_axis, index_first_axis_residual,
                                     index_put_first_axis, pad_input, unpad_input,
                                     unpad_input_for_concatenated_sequences)


def test_unpad_pad_round_trip():
    g = torch.Generator().manual_seed(0)
    B, S, H, D = 3, 7, 2, 5
    x = torch.randn(B, S, H, D, generator=g)
    lens = torch.tensor([7, 2, 5])
    mask = torch.arange(S).view(1, S) < lens.view(B, 1)
    hidden, indices, cu, max_len, used = unpad_input(x, mask)
    assert hidden.shape == (14, H, D)
    assert indices.dtype == torch.int64 and cu.dtype == torch.int32 and used.dtype == torch.int32
    assert cu.tolist() == [0, 7, 9, 14] and isinstance(max_len, int) and max_len == 7
    assert used.tolist() == [7, 2, 5]
    torch.testing.assert_close(hidden, x[mask])
    back = pad_input(hidden, indices, B, S)
    torch.testing.assert_close(back, x * mask.view(B, S, 1, 1))


def test_unpad_with_unused_mask():
    x = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    unused = torch.tensor([[0, 0, 1, 0, 0], [0, 0, 0, 1, 1]])
    hidden, indices, cu, max_len, used = unpad_input(x, mask, unused)
    assert cu.tolist() == [0, 3, 8] and max_len == 5 and used.tolist() == [2, 3]
    assert indices.tolist() == [0, 1, 2, 5, 6, 7, 8, 9]


def test_index_functions_gradients():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64).requires_grad_()
    idx = torch.tensor([4, 0, 2])
    y = index_first_axis(x, idx)
    torch.testing.assert_close(y, x[idx])
    torch.autograd.gradcheck(lambda t: index_first_axis(t, idx), (x,))
    vals = torch.randn(3, 2, 2, generator=g, dtype=torch.float64).requires_grad_()
    out = index_put_first_axis(vals, idx, 6)
    assert out.shape == (6, 2, 2) and torch.equal(out[idx], vals) and out[1].abs().sum() == 0
    torch.autograd.gradcheck(lambda t: index_put_first_axis(t, idx, 6), (vals,))
    sel, res = index_first_axis_residual(x, idx)
    assert torch.equal(sel, x[idx]) and torch.equal(res, x)
    (sel.sum() * 2 + res.sum()).backward()
    want = torch.ones(6, 4, dtype=torch.float64)
    want[idx] += 2
    torch.testing.assert_close(x.grad, want)


def test_pad_input_gradient():
    hidden = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    indices = torch.tensor([0, 1, 4, 6, 7])
    torch.autograd.gradcheck(lambda h: pad_input(h, indices, 2, 4), (hidden,))


def test_unpad_for_concatenated_sequences():
    x = torch.arange(12.0).view(2, 6, 1)
    lens = torch.tensor([[2, 3, 0, 0, 0, 0], [3, 2, 0, 0, 0, 0]])
    hidden, indices, cu, max_len = unpad_input_for_concatenated_sequences(x, lens)
    assert cu.tolist() == [0, 2, 5, 8, 10] and cu.dtype == torch.int32 and max_len == 3
    assert indices.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert hidden.flatten().tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
