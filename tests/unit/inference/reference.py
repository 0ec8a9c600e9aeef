"""Independent reference forward passes written from the upstream definitions.

These use only raw state-dict tensors and plain tensor ops (and torch's own
``multi_head_attention_forward`` for the open_clip tower, which upstream runs through
``nn.MultiheadAttention``), so they catch key-mapping or ordering mistakes in the node's
modules rather than sharing them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def _attention_by_hand(
    x: torch.Tensor, qkv_w: torch.Tensor, qkv_b: torch.Tensor, heads: int
) -> torch.Tensor:
    batch, tokens, width = x.shape
    head_dim = width // heads
    qkv = x @ qkv_w.T + qkv_b
    q, k, v = qkv[..., :width], qkv[..., width : 2 * width], qkv[..., 2 * width :]

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, tokens, heads, head_dim).permute(0, 2, 1, 3)

    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(head_dim)
    weights = torch.softmax(scores, dim=-1)
    out = weights @ split(v)
    return out.permute(0, 2, 1, 3).reshape(batch, tokens, width)


def dinov2_llava_rad_reference(
    trunk: dict[str, torch.Tensor],
    projector: dict[str, torch.Tensor],
    pixels: torch.Tensor,
    *,
    heads: int,
    select_layer: int,
) -> torch.Tensor:
    """timm DINOv2 trunk → hidden_states[select_layer] → drop CLS → mlp2x_gelu projector."""
    sd = {k: v.double() for k, v in trunk.items()}
    x = pixels.double()
    patch = sd["patch_embed.proj.weight"].shape[-1]
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd["pos_embed"]
    width = x.shape[-1]
    hidden_states = [x]
    layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(layers):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (width,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        a = _attention_by_hand(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"], heads)
        a = a @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        x = x + sd[p + "ls1.gamma"] * a
        h = F.layer_norm(x, (width,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        m = F.gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        m = m @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
        x = x + sd[p + "ls2.gamma"] * m
        hidden_states.append(x)
    features = hidden_states[select_layer][:, 1:]
    pr = {k: v.double() for k, v in projector.items()}
    out = F.gelu(features @ pr["0.weight"].T + pr["0.bias"]) @ pr["2.weight"].T + pr["2.bias"]
    return out.float()


def openclip_cxr_llava_reference(
    vision: dict[str, torch.Tensor],
    projector: dict[str, torch.Tensor],
    pixels: torch.Tensor,
    *,
    heads: int,
) -> torch.Tensor:
    """open_clip VisionTransformer (LND layout, nn.MultiheadAttention math) → ln_post →
    drop CLS → Linear projector, as CXR-LLaVA's ``encode_images``."""
    sd = {k: v.double() for k, v in vision.items()}
    patch = sd["conv1.weight"].shape[-1]
    x = F.conv2d(pixels.double(), sd["conv1.weight"], None, stride=patch)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([sd["class_embedding"].view(1, 1, -1).expand(x.shape[0], -1, -1), x], dim=1)
    x = x + sd["positional_embedding"]
    width = x.shape[-1]
    x = F.layer_norm(x, (width,), sd["ln_pre.weight"], sd["ln_pre.bias"])
    x = x.permute(1, 0, 2)
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (width,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        attn, _ = F.multi_head_attention_forward(
            h,
            h,
            h,
            width,
            heads,
            sd[p + "attn.in_proj_weight"],
            sd[p + "attn.in_proj_bias"],
            None,
            None,
            False,
            0.0,
            sd[p + "attn.out_proj.weight"],
            sd[p + "attn.out_proj.bias"],
            training=False,
            need_weights=False,
        )
        x = x + attn
        h = F.layer_norm(x, (width,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        m = F.gelu(h @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"])
        x = x + (m @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"])
    x = x.permute(1, 0, 2)
    x = F.layer_norm(x, (width,), sd["ln_post.weight"], sd["ln_post.bias"])
    tokens = x[:, 1:]
    out = tokens @ projector["weight"].double().T + projector["bias"].double()
    return out.float()


def upstream_prompt_ids(tokenizer: Any, prompt: str) -> tuple[list[int], list[int]]:
    """Token ids around ``<image>`` as LLaVA's ``tokenizer_image_token`` builds them.

    Each chunk is tokenised on its own by a tokenizer that adds BOS (a literal ``<s>`` in
    the text is a second BOS); the first chunk keeps its ids, the later ones lose their
    first id when the first chunk starts with BOS.
    """
    bos = tokenizer.bos_token_id
    before, after = (
        [bos, *tokenizer.encode(chunk, add_special_tokens=False)]
        for chunk in prompt.split("<image>")
    )
    return before, after[1:]


@torch.no_grad()
def greedy_reference(
    model: Any,
    before: list[int],
    image_embeds: torch.Tensor,
    after: list[int],
    *,
    eos: int,
    max_new_tokens: int,
) -> list[int]:
    """Greedy decoding by full recomputation each step (no KV cache, no ``generate``)."""
    table = model.get_input_embeddings().weight
    sequence = torch.cat([table[before], image_embeds.to(table.dtype), table[after]], dim=0)
    produced: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(inputs_embeds=sequence[None]).logits[0, -1]
        token = int(torch.argmax(logits))
        if token == eos:
            break
        produced.append(token)
        sequence = torch.cat([sequence, table[token][None]], dim=0)
    return produced
