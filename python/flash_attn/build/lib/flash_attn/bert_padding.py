# Padding helpers for variable-length batches (API.md §6): move between a padded (batch, seqlen,
# ...) layout and the packed (total_nnz, ...) layout of the varlen functions. Plain PyTorch.
import torch
import torch.nn.functional as F


class IndexFirstAxis(torch.autograd.Function):
    """input[indices] along the first axis; the backward scatters into zeros."""

    @staticmethod
    def forward(ctx, input, indices):
        ctx.save_for_backward(indices)
        assert input.ndim >= 2
        ctx.first_axis_dim, other_shape = input.shape[0], input.shape[1:]
        # A 2-D gather is faster than indexing an N-D tensor.
        flat = input.reshape(input.shape[0], -1)
        idx = indices.unsqueeze(1).expand(-1, flat.shape[1])
        return torch.gather(flat, 0, idx).reshape(-1, *other_shape)

    @staticmethod
    def backward(ctx, grad_output):
        (indices,) = ctx.saved_tensors
        assert grad_output.ndim >= 2
        other_shape = grad_output.shape[1:]
        grad = grad_output.reshape(grad_output.shape[0], -1)
        grad_input = torch.zeros((ctx.first_axis_dim, grad.shape[1]), device=grad.device,
                                 dtype=grad.dtype)
        grad_input.scatter_(0, indices.unsqueeze(1).expand(-1, grad.shape[1]), grad)
        return grad_input.reshape(ctx.first_axis_dim, *other_shape), None


index_first_axis = IndexFirstAxis.apply


class IndexPutFirstAxis(torch.autograd.Function):
    """zeros(first_axis_dim, ...) with rows `indices` set to `values`; the backward gathers."""

    @staticmethod
    def forward(ctx, values, indices, first_axis_dim):
        ctx.save_for_backward(indices)
        assert indices.ndim == 1
        assert values.ndim >= 2
        output = torch.zeros(first_axis_dim, *values.shape[1:], device=values.device,
                             dtype=values.dtype)
        output[indices] = values
        return output

    @staticmethod
    def backward(ctx, grad_output):
        (indices,) = ctx.saved_tensors
        return grad_output[indices], None, None


index_put_first_axis = IndexPutFirstAxis.apply


class IndexFirstAxisResidual(torch.autograd.Function):
    """(input[indices], input.detach()); the backward adds the first gradient into the second's."""

    @staticmethod
    def forward(ctx, input, indices):
        ctx.save_for_backward(indices)
        assert input.ndim >= 2
        ctx.first_axis_dim = input.shape[0]
        return input[indices], input.detach()

    @staticmethod
    def backward(ctx, grad_output, grad_residual):
        (indices,) = ctx.saved_tensors
        assert grad_output.ndim >= 2
        grad_input = grad_residual.clone() if grad_residual is not None else torch.zeros(
            (ctx.first_axis_dim, *grad_output.shape[1:]), device=grad_output.device,
            dtype=grad_output.dtype)
        grad_input.index_add_(0, indices, grad_output)
        return grad_input, None


index_first_axis_residual = IndexFirstAxisResidual.apply


def _flat(hidden_states):
    return hidden_states.reshape(hidden_states.shape[0] * hidden_states.shape[1],
                                 *hidden_states.shape[2:])


def unpad_input(hidden_states, attention_mask, unused_mask=None):
    """
    Arguments:
        hidden_states: (batch, seqlen, ...)
        attention_mask: (batch, seqlen), bool / int, 1 means valid and 0 means not valid.
        unused_mask: (batch, seqlen), bool / int, 1 means the element is allocated but unused.
    Return:
        hidden_states: (total_nnz, ...), the selected tokens (attention_mask + unused_mask).
        indices: (total_nnz,), int64, into the flattened (batch * seqlen) positions.
        cu_seqlens: (batch + 1,), int32, the cumulative selected lengths with a leading 0.
        max_seqlen_in_batch: int.
        seqused: (batch,), int32, the number of valid (attention_mask) tokens of each row.
    """
    all_masks = (attention_mask + unused_mask) if unused_mask is not None else attention_mask
    seqlens_in_batch = all_masks.sum(dim=-1, dtype=torch.int32)
    used_seqlens_in_batch = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(all_masks.flatten(), as_tuple=False).flatten()
    max_seqlen_in_batch = int(seqlens_in_batch.max()) if seqlens_in_batch.numel() else 0
    cu_seqlens = F.pad(torch.cumsum(seqlens_in_batch, dim=0, dtype=torch.int32), (1, 0))
    return (index_first_axis(_flat(hidden_states), indices), indices, cu_seqlens,
            max_seqlen_in_batch, used_seqlens_in_batch)


def unpad_input_for_concatenated_sequences(hidden_states, attention_mask_in_length):
    """
    Like unpad_input, for rows that each hold several sequences packed back to back.

    Arguments:
        hidden_states: (batch, seqlen, ...)
        attention_mask_in_length: (batch, seqlen), int: row b lists the lengths of the sequences
            packed into row b, followed by zeros. E.g. [[2, 3, 0, 0, 0, 0], [3, 2, 0, 0, 0, 0]]
            holds sequences of 2 and 3 tokens in each row.
    Return:
        hidden_states: (total_nnz, ...), the first sum(row) tokens of each row.
        indices: (total_nnz,), int64.
        cu_seqlens: (num_sequences + 1,), int32.
        max_seqlen_in_batch: int.
    """
    length = attention_mask_in_length.sum(dim=-1)
    seqlen = attention_mask_in_length.size(-1)
    positions = torch.arange(seqlen, device=length.device).expand(length.shape[0], seqlen)
    attention_mask_2d = positions < length.unsqueeze(1)
    real_lengths = attention_mask_in_length.flatten()
    seqlens_in_batch = real_lengths[real_lengths.nonzero().squeeze(1)].to(torch.int32)
    indices = torch.nonzero(attention_mask_2d.flatten(), as_tuple=False).flatten()
    max_seqlen_in_batch = int(seqlens_in_batch.max()) if seqlens_in_batch.numel() else 0
    cu_seqlens = F.pad(torch.cumsum(seqlens_in_batch, dim=0, dtype=torch.int32), (1, 0))
    return (index_first_axis(_flat(hidden_states), indices), indices, cu_seqlens,
            max_seqlen_in_batch)


def pad_input(hidden_states, indices, batch, seqlen):
    """
    Arguments:
        hidden_states: (total_nnz, ...), where total_nnz = number of tokens selected.
        indices: (total_nnz,), as returned by unpad_input.
        batch, seqlen: int.
    Return:
        hidden_states: (batch, seqlen, ...), zeros where nothing was selected.
    """
    output = index_put_first_axis(hidden_states, indices, batch * seqlen)
    return output.reshape(batch, seqlen, *hidden_states.shape[1:])
