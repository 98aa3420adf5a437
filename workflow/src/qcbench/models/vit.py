"""A small Vision Transformer (Dosovitskiy et al., 2021) built from quantizable modules.

Every weight matmul is an ``nn.Linear`` (the fake quantizer swaps Conv2d/Linear only, so
``nn.MultiheadAttention``, whose input projection is a bare parameter, is not used): a patch
embedding ``Conv2d(kernel = stride = patch)``, a class token and learned position embeddings,
``depth`` pre-norm blocks (LayerNorm -> qkv Linear -> softmax(q k^T / sqrt(d)) v over ``heads``
heads as tensor ops -> proj Linear -> residual; LayerNorm -> Linear -> GELU -> Linear ->
residual), a final LayerNorm and a Linear head on the class token. No dropout.

The position embedding is sized for ``image_size``: the pipeline passes the dataset's (through
:func:`~qcbench.models.create_model`), so one ``archs: {vit: {patch: 16, dim: 384, depth: 12,
heads: 6}}`` serves every dataset whose side is a multiple of ``patch``; built by hand it
defaults to 32. The
defaults (patch 4, dim 192, depth 6, heads 3, MLP ratio 4) are a small ViT for 32x32 images.
With no BatchNorm, LAC's PDA has nothing to match and LAC runs without it on this model.

The LAC paper's EfficientViT (Table 3) is out of scope: it is not registered.
"""

from __future__ import annotations

import torch
from torch import nn

from qcbench.models._registry import register_model
from qcbench.models.layers import Normalize


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"ViT dim {dim} is not divisible by heads {heads}")
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (b, heads, n, d)
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(
        self,
        num_classes,
        in_channels,
        mean,
        std,
        image_size: int = 32,
        patch: int = 4,
        dim: int = 192,
        depth: int = 6,
        heads: int = 3,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"ViT image_size {image_size} is not a multiple of patch {patch}")
        self.normalize = Normalize(mean, std)
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.patch_embed(self.normalize(x)).flatten(2).transpose(1, 2)  # (b, patches, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@register_model("vit")
def vit(**kw) -> ViT:
    """Small ViT (patch 4, dim 192, depth 6, heads 3: 2.7M parameters at 3x32x32, 10 classes)."""
    return ViT(**kw)


vit.takes_image_size = True  # create_model passes the dataset's image size
