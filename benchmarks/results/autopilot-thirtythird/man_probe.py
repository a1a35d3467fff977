"""Each tensor idiom in one tiny model, through prunedrop.storage save_model and load_saved_model: which ones
architecture.json refuses, and whether the rebuilt model computes what the model does (python man_probe.py)."""
import math
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

from prunedrop.storage.saved import load_saved_model, save_model

IDIOMS = {
    "new_zeros": lambda h: h + h.new_zeros(h.shape),
    "new_ones": lambda h: h * h.new_ones(1),
    "new_full": lambda h: h + h.new_full((1,), 0.5),
    "new_tensor": lambda h: h * h.new_tensor([2.0]),
    "full_like": lambda h: h + torch.full_like(h, 0.1),
    "ones_like": lambda h: h * torch.ones_like(h),
    "arange_pos": lambda h: h + torch.arange(h.shape[-1], device=h.device, dtype=h.dtype) * 0.01,
    "linspace": lambda h: h + torch.linspace(0, 1, h.shape[-1]),
    "sin_cos": lambda h: torch.sin(h) + torch.cos(h) + h.sin(),
    "exp_log": lambda h: torch.log1p(h.abs()) + torch.exp(-h.abs()),
    "sign": lambda h: torch.sign(h) * h.abs(),
    "softplus": lambda h: F.softplus(h) + F.mish(h) + F.elu(h) + F.celu(h),
    "leaky": lambda h: F.leaky_relu(h, 0.1) + F.hardtanh(h) + F.relu6(h),
    "erf_gelu": lambda h: h * 0.5 * (1 + torch.erf(h / math.sqrt(2))),
    "tanh_gelu": lambda h: 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * torch.pow(h, 3)))),
    "chunk_cat": lambda h: torch.cat(h.chunk(2, 1)[::-1], 1),
    "split_cat": lambda h: torch.cat(list(h.split([6, 10], 1)), 1),
    "unbind_stack": lambda h: torch.stack(h.unbind(1), 1),
    "permute": lambda h: h.permute(0, 2, 1).contiguous().permute(0, 2, 1),
    "transpose_T": lambda h: h.mT.mT,
    "masked_fill": lambda h: h.masked_fill(h < -1, 0.0),
    "where": lambda h: torch.where(h > 0, h, 0.1 * h),
    "clip": lambda h: torch.clip(h, -1, 1) + h.clamp(min=-2),
    "normalize": lambda h: F.normalize(h, dim=-1),
    "cumsum_flip": lambda h: torch.flip(torch.cumsum(h, -1), (-1,)),
    "roll": lambda h: torch.roll(h, 1, -1),
    "expand_repeat": lambda h: h.mean(1, keepdim=True).expand_as(h) + h[:, :1].repeat(1, h.shape[1], 1),
    "std_var": lambda h: (h - h.mean(-1, keepdim=True)) / (h.std(-1, keepdim=True) + 1e-5),
    "logsumexp": lambda h: h - torch.logsumexp(h, -1, keepdim=True),
    "max_dim": lambda h: h + torch.max(h, -1, keepdim=True)[0] + h.max(-1, keepdim=True).values,
    "argmax_onehot": lambda h: h + F.one_hot(h.argmax(-1), h.shape[-1]).float(),
    "gather": lambda h: torch.gather(h, -1, h.argsort(-1)),
    "tensor_unfold": lambda h: h.unfold(-1, 4, 4).mean(-1).repeat_interleave(4, -1),
    "bmm": lambda h: torch.bmm(h, h.transpose(1, 2)).softmax(-1) @ h,
    "einsum": lambda h: torch.einsum("bij,bkj->bik", h, h).softmax(-1) @ h,
    "matmul_op": lambda h: (h @ h.transpose(-1, -2) / 4) @ h,
    "sdpa": lambda h: F.scaled_dot_product_attention(h.unsqueeze(1), h.unsqueeze(1), h.unsqueeze(1)).squeeze(1),
    "to_dtype": lambda h: h.to(torch.float16).to(torch.float32) + h.double().float(),
    "type_as": lambda h: h + h.detach().round().type_as(h),
    "nan_to_num": lambda h: torch.nan_to_num(h / (h.abs() > 0.1).float()),
    "isfinite": lambda h: torch.where(torch.isfinite(h), h, 0.0),
    "triu": lambda h: h + torch.triu(torch.ones(h.shape[-2], h.shape[-1], device=h.device)),
    "masked_softmax": lambda h: h.masked_fill(torch.ones(h.shape[1], h.shape[1], dtype=torch.bool).triu(1)[:, :h.shape[-1]], float("-inf")).softmax(-1),
    "square_rsqrt": lambda h: h * torch.rsqrt(h.square().mean(-1, keepdim=True) + 1e-6),
    "div_floor": lambda h: h + torch.div(h, 2, rounding_mode="floor") * 0.0,
    "pow_op": lambda h: h ** 2 + 2 ** h.clamp(max=3),
    "reshape_neg": lambda h: h.reshape(h.shape[0], -1).reshape(h.shape),
    "view_as": lambda h: h.flatten(1).view_as(h.reshape(h.shape[0], -1)).view(h.shape),
    "interpolate": lambda h: F.interpolate(h, scale_factor=2, mode="linear").mean(-1, keepdim=True).expand_as(h) + h,
    "avgpool1d": lambda h: F.avg_pool1d(h, 2).repeat_interleave(2, -1),
    "maxpool1d": lambda h: F.max_pool1d(h, 2, 2).repeat_interleave(2, -1),
    "adaptive": lambda h: F.adaptive_avg_pool1d(h, 1) + F.adaptive_max_pool1d(h, 1) + h,
    "dropout_f": lambda h: F.dropout(h, 0.1, training=False),
    "isinstance_branch": lambda h: h * 2 if isinstance(h, torch.Tensor) else h,
    "amax_amin": lambda h: h - h.amax(-1, keepdim=True) + h.amin(-1, keepdim=True),
    "prod": lambda h: h + h.tanh().prod(-1, keepdim=True),
    "cummax": lambda h: h + torch.cummax(h, -1)[0],
    "topk": lambda h: h + torch.topk(h, 2, -1).values.mean(-1, keepdim=True),
    "sort": lambda h: torch.sort(h, -1).values,
    "index_select": lambda h: h.index_select(-1, torch.arange(h.shape[-1] - 1, -1, -1)),
    "slice_step": lambda h: torch.cat([h[..., ::2], h[..., 1::2]], -1),
    "ellipsis_none": lambda h: h[..., None].squeeze(-1) + h[:, None, 0].expand_as(h),
    "bool_index": lambda h: h * (h > 0),
    "logical": lambda h: h * ((h > 0) & (h < 1)).float() + h * ((h < 0) | (h > 2)).float() + h * (~(h > 0)).float(),
    "abs_method": lambda h: h.abs().sqrt().exp().log(),
    "addcmul": lambda h: torch.addcmul(h, h, h, value=0.1),
    "lerp": lambda h: torch.lerp(h, h.tanh(), 0.5),
    "minimum": lambda h: torch.minimum(h, h.tanh()) + torch.maximum(h, h.sigmoid()),
    "sigmoid_method": lambda h: h.sigmoid() * h.tanh() * h.relu(),
    "hardswish_f": lambda h: F.hardswish(h) + F.hardsigmoid(h) + F.silu(h) + F.logsigmoid(h),
    "glu": lambda h: F.glu(torch.cat([h, h], 1), 1),
    "softmin_logsoftmax": lambda h: F.softmin(h, -1) + F.log_softmax(h, -1),
    "clamp_min_max": lambda h: h.clamp_min(-1).clamp_max(1),
    "numel_size": lambda h: h / h.numel() * h.size(0) * h.size()[1],
    "int_shape_math": lambda h: h.reshape(h.shape[0], h.shape[1] * h.shape[2] // 16, 16),
    "fmod": lambda h: torch.fmod(h, 1.0) + torch.remainder(h, 1.0),
    "atan2": lambda h: torch.atan2(h, h + 1),
    "reciprocal": lambda h: torch.reciprocal(h.abs() + 1),
    "trunc_frac": lambda h: h.trunc() * 0 + h.frac(),
    "flatten_unflatten": lambda h: h.flatten(1).unflatten(1, (h.shape[1], h.shape[2])),
    "narrow": lambda h: torch.cat([h.narrow(-1, 0, 8), h.narrow(-1, 8, 8)], -1),
    "squeeze_dims": lambda h: h.unsqueeze(0).squeeze(0).unsqueeze(-1).squeeze(-1),
    "movedim": lambda h: h.movedim(1, 2).movedim(2, 1),
    "swapaxes": lambda h: h.swapaxes(1, 2).swapaxes(1, 2),
    "diff": lambda h: F.pad(torch.diff(h, dim=-1), (1, 0)),
    "clone_detach_add": lambda h: h + h.clone() * 0,
    "sum_list": lambda h: sum([h, h * 2]),
    "mean_list": lambda h: torch.stack([h, h.tanh()]).mean(0),
    "logical_not_where": lambda h: torch.where(~(h > 0), -h, h),
}

class M(nn.Module):
    def __init__(self, idiom):
        super().__init__()
        self.idiom = idiom
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 3)
    def forward(self, x):
        h = self.a(x.reshape(x.shape[0], 4, 16))   # (N, 4, 16)
        h = h.transpose(1, 2)                      # (N, 16, 4)
        h = IDIOMS[self.idiom](h.transpose(1, 2) if self.idiom in ("tensor_unfold", "narrow", "split_cat") else h)
        if self.idiom in ("tensor_unfold", "narrow", "split_cat"):
            h = h.transpose(1, 2)
        return self.b(h.mean(-1))

ok, bad = [], []
for name in IDIOMS:
    torch.manual_seed(0)
    m = M(name).eval()
    x = torch.randn(3, 1, 8, 8)
    try:
        with torch.no_grad():
            m(x)
    except Exception as e:
        bad.append((name, "MODEL ITSELF FAILS: " + str(e)[:100]))
        continue
    d = tempfile.mkdtemp()
    try:
        save_model(m, d, x)
        back = load_saved_model(d)
        with torch.no_grad():
            fresh = torch.randn(5, 1, 8, 8)
            diff = float((back(fresh) - m(fresh)).abs().max())
        ok.append(name) if diff < 1e-4 else bad.append((name, f"diff {diff}"))
    except Exception as e:
        bad.append((name, str(e)[:230]))
print("OK", len(ok))
for n, e in bad:
    print("BAD", n, "::", e)
