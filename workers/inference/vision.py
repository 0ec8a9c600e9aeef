"""Vision transformers in plain torch, with state-dict keys matching the upstream towers.

Two trunks are provided:

``dinov2_vit``
    The timm ``vit_*_patch14_dinov2`` layout used by LLaVA-Rad's BiomedCLIP-CXR tower
    (keys ``patch_embed.proj.*``, ``cls_token``, ``pos_embed``, ``blocks.N.{norm1, attn.qkv,
    attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``, ``norm.*``).
``openclip_vit``
    The open_clip ``VisionTransformer`` layout used by CXR-LLaVA (keys ``conv1.weight``,
    ``class_embedding``, ``positional_embedding``, ``ln_pre.*``,
    ``transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj,
    ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_post.*``).

Both return the hidden state selected by :attr:`VisionSpec.select_layer` (Hugging Face
indexing: 0 is the embedding output, ``i`` the output of block ``i - 1``), optionally passed
through the final norm and with the CLS token optionally dropped. Only the blocks needed to
reach the selected hidden state are instantiated, so unused trailing blocks are not exported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workers.inference.manifest import VisionSpec


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the activation of the original CLIP towers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _activation(name: str) -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return QuickGELU()
    raise ValueError(f"unknown activation {name!r}")


def multihead_self_attention(
    x: torch.Tensor,
    qkv_weight: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    heads: int,
) -> torch.Tensor:
    """Fused-QKV multi-head self-attention without the output projection.

    Parameters
    ----------
    x
        Tokens, shape (B, N, D).
    qkv_weight, qkv_bias
        Projection of shape (3D, D) / (3D,), rows ordered query, key, value.
    heads
        Number of heads; the head width is ``D // heads``.

    Returns
    -------
    torch.Tensor
        Attended values, shape (B, N, D), heads concatenated.
    """
    batch, tokens, width = x.shape
    head_dim = width // heads
    qkv = F.linear(x, qkv_weight, qkv_bias)
    qkv = qkv.reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    query, key, value = qkv[0], qkv[1], qkv[2]
    attended = F.scaled_dot_product_attention(query, key, value)
    return attended.transpose(1, 2).reshape(batch, tokens, width)


class LayerScale(nn.Module):
    """Per-channel residual scale (parameter named ``gamma`` as in timm/open_clip)."""

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class TimmAttention(nn.Module):
    """timm ``Attention``: fused ``qkv`` Linear and output ``proj`` Linear."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attended = multihead_self_attention(x, self.qkv.weight, self.qkv.bias, self.heads)
        out: torch.Tensor = self.proj(attended)
        return out


class TimmMlp(nn.Module):
    """timm ``Mlp``: ``fc1`` → activation → ``fc2``."""

    def __init__(self, dim: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = _activation(activation)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(self.act(self.fc1(x)))
        return out


class TimmBlock(nn.Module):
    """Pre-norm transformer block with optional LayerScale (timm ``Block``)."""

    def __init__(self, spec: VisionSpec) -> None:
        super().__init__()
        dim = spec.width
        self.norm1 = nn.LayerNorm(dim, eps=spec.norm_eps)
        self.attn = TimmAttention(dim, spec.heads)
        self.ls1: nn.Module = LayerScale(dim) if spec.layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=spec.norm_eps)
        self.mlp = TimmMlp(dim, spec.mlp_hidden, spec.activation)
        self.ls2: nn.Module = LayerScale(dim) if spec.layerscale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        out: torch.Tensor = x + self.ls2(self.mlp(self.norm2(x)))
        return out


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (timm ``PatchEmbed``: key ``proj``)."""

    def __init__(self, in_channels: int, width: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.proj(pixels).flatten(2).transpose(1, 2)
        return out


class DinoV2ViT(nn.Module):
    """timm DINOv2 ViT trunk (no register tokens, absolute learned position embedding).

    Forward follows timm: patch embed → prepend CLS → add ``pos_embed`` → ``norm_pre``
    (identity for DINOv2) → blocks.
    """

    def __init__(self, spec: VisionSpec) -> None:
        super().__init__()
        if spec.kind != "dinov2_vit":
            raise ValueError(f"DinoV2ViT cannot build {spec.kind!r}")
        self.spec = spec
        self.patch_embed = PatchEmbed(spec.in_channels, spec.width, spec.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.num_patches + 1, spec.width))
        self.blocks = nn.ModuleList(TimmBlock(spec) for _ in range(spec.block_count_needed))
        self.norm: nn.Module = (
            nn.LayerNorm(spec.width, eps=spec.norm_eps) if spec.final_norm else nn.Identity()
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        out: torch.Tensor = x[:, 1:] if self.spec.drop_cls else x
        return out


class OpenClipAttention(nn.Module):
    """``nn.MultiheadAttention``-compatible parameters (``in_proj_*``, ``out_proj``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.zeros(dim * 3, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(dim * 3))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attended = multihead_self_attention(x, self.in_proj_weight, self.in_proj_bias, self.heads)
        out: torch.Tensor = self.out_proj(attended)
        return out


class OpenClipMlp(nn.Module):
    """open_clip block MLP: ``c_fc`` → activation → ``c_proj``."""

    def __init__(self, dim: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden)
        self.gelu = _activation(activation)
        self.c_proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.c_proj(self.gelu(self.c_fc(x)))
        return out


class OpenClipBlock(nn.Module):
    """open_clip ``ResidualAttentionBlock`` (pre-norm, optional LayerScale ``ls_1``/``ls_2``)."""

    def __init__(self, spec: VisionSpec) -> None:
        super().__init__()
        dim = spec.width
        self.ln_1 = nn.LayerNorm(dim, eps=spec.norm_eps)
        self.attn = OpenClipAttention(dim, spec.heads)
        self.ls_1: nn.Module = LayerScale(dim) if spec.layerscale else nn.Identity()
        self.ln_2 = nn.LayerNorm(dim, eps=spec.norm_eps)
        self.mlp = OpenClipMlp(dim, spec.mlp_hidden, spec.activation)
        self.ls_2: nn.Module = LayerScale(dim) if spec.layerscale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls_1(self.attn(self.ln_1(x)))
        out: torch.Tensor = x + self.ls_2(self.mlp(self.ln_2(x)))
        return out


class OpenClipTransformer(nn.Module):
    """Container so that block keys read ``transformer.resblocks.N.*``."""

    def __init__(self, spec: VisionSpec) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(OpenClipBlock(spec) for _ in range(spec.block_count_needed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class OpenClipViT(nn.Module):
    """open_clip ``VisionTransformer`` trunk returning per-token features.

    Forward: ``conv1`` (no bias) → prepend ``class_embedding`` → add ``positional_embedding``
    → ``ln_pre`` → resblocks → ``ln_post`` (when ``final_norm``) → drop CLS (when ``drop_cls``).
    """

    def __init__(self, spec: VisionSpec) -> None:
        super().__init__()
        if spec.kind != "openclip_vit":
            raise ValueError(f"OpenClipViT cannot build {spec.kind!r}")
        self.spec = spec
        self.conv1 = nn.Conv2d(
            spec.in_channels,
            spec.width,
            kernel_size=spec.patch_size,
            stride=spec.patch_size,
            bias=False,
        )
        self.class_embedding = nn.Parameter(torch.zeros(spec.width))
        self.positional_embedding = nn.Parameter(torch.zeros(spec.num_patches + 1, spec.width))
        self.ln_pre: nn.Module = (
            nn.Identity() if spec.no_ln_pre else nn.LayerNorm(spec.width, eps=spec.norm_eps)
        )
        self.transformer = OpenClipTransformer(spec)
        self.ln_post: nn.Module = (
            nn.LayerNorm(spec.width, eps=spec.norm_eps) if spec.final_norm else nn.Identity()
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixels).flatten(2).transpose(1, 2)
        cls = self.class_embedding.reshape(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        x = self.transformer(x)
        x = self.ln_post(x)
        out: torch.Tensor = x[:, 1:] if self.spec.drop_cls else x
        return out


def build_vision_tower(spec: VisionSpec) -> nn.Module:
    """Instantiate the vision trunk described by ``spec`` (weights uninitialised).

    Parameters
    ----------
    spec
        Vision tower description.

    Returns
    -------
    torch.nn.Module
        A module mapping (B, C, H, W) float pixels to (B, tokens, width) features.
    """
    if spec.kind == "dinov2_vit":
        return DinoV2ViT(spec)
    if spec.kind == "openclip_vit":
        return OpenClipViT(spec)
    raise ValueError(f"unknown vision kind {spec.kind!r}")


def init_vision_weights(
    module: nn.Module, generator: torch.Generator | None = None, std: float = 0.02
) -> None:
    """Fill a freshly built tower with small random weights (for synthetic models and tests).

    Parameters
    ----------
    module
        A module from :func:`build_vision_tower`.
    generator
        Optional RNG for reproducibility.
    std
        Standard deviation of the normal initialisation of matrices and embeddings.
    """
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("gamma"):
                param.fill_(1.0)
            elif (
                isinstance(param, nn.Parameter)
                and param.ndim == 1
                and (".ln" in f".{name}" or "norm" in name)
            ):
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.normal_(0.0, std, generator=generator)


__all__ = [
    "DinoV2ViT",
    "LayerScale",
    "OpenClipViT",
    "QuickGELU",
    "build_vision_tower",
    "init_vision_weights",
    "multihead_self_attention",
]
