"""The upstream half of ``bench/upstream_parity.py``: run inside the upstream environment.

It never imports radnode. With the published CXR-LLaVA code (``CXR_LLAVA_HF`` from the
checkout given by ``--upstream``) and that code's pinned library versions it

1. writes a tiny release folder: a SentencePiece ``tokenizer.model`` and its configs, a
   ``generation_config.json``, and a ``CXRLLAVAModel`` built by the upstream class from a
   tiny config, saved with ``save_pretrained`` as safetensors shards;
2. reloads it with ``CXRLLAVAModel.from_pretrained`` and records every stage of the
   upstream inference path for a few images, once in bf16 as published and once with the
   same code in float32: pixels from its image processor, prompt ids
   from its chat template and ``tokenizer_image_token``, image features from
   ``encode_images``, the logits of one forward pass and greedy ids from ``generate``.

Everything goes to ``--out`` (``upstream.npz`` + ``upstream.json``). Usage (from the
driver)::

    /tmp/venv/bin/python bench/upstream_side_cxr_llava.py --upstream /src/CXR_LLaVA \\
        --out /tmp/work/legacy-true --legacy true
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

CORPUS = [
    "You are a helpful radiologist. Try to interpret chest x ray image and answer to the "
    "question that user provides.",
    "[INST] <<SYS>> system <</SYS>> [/INST]",
    "Write a radiologic report on the given chest radiograph, including information about "
    "atelectasis, cardiomegaly, consolidation, pulmonary edema, pleural effusion, and "
    "pneumothorax.",
    "The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
    "Mild cardiomegaly with small bilateral pleural effusions and bibasilar atelectasis.",
]
# (rows, columns): square, and portrait / landscape sides whose resized long side minus the
# crop is 3 or 7 (torchvision's rounding and the processor's floor place the crop apart)
# and 5 or 6 (both agree).
IMAGE_SHAPES = [(64, 64), (67, 64), (105, 100), (128, 143), (120, 131), (70, 64)]
IMAGE_SIZE = 64
MAX_NEW_TOKENS = 12


def write_tokenizer(folder: Path, legacy: bool | None) -> int:
    """SentencePiece BPE model (byte fallback, dummy prefix) and LLaMA tokenizer configs."""
    import sentencepiece

    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 3),
        model_writer=buffer,
        vocab_size=300,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(buffer.getvalue())
    config: dict[str, Any] = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "tokenizer_class": "LlamaTokenizer",
    }
    if legacy is not None:
        config["legacy"] = legacy
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    processor = sentencepiece.SentencePieceProcessor(model_proto=buffer.getvalue())
    return int(processor.get_piece_size())


def build_release(module: Any, folder: Path, legacy: bool | None, penalty: float | None) -> None:
    """Write the tiny release with the upstream classes."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(folder, legacy)
    generation: dict[str, Any] = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if penalty is not None:
        generation["repetition_penalty"] = penalty
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    llama = {
        "vocab_size": vocab,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "rope_theta": 10000.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "tie_word_embeddings": False,
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
    }
    config = module.CXRLLAVAConfig(
        name_or_path=str(folder),
        clip_vision_cfg={"image_size": IMAGE_SIZE, "layers": 2, "patch_size": 16, "width": 128},
        clip_embed_dim=32,
        clip_vision_tower_dtype="bf16",
        image_preprocess_cfg={"mean": 0.5518136078431373, "std": 0.3821719215686275},
        llama=llama,
        mm_projector_dim=128,
        mm_projector_dtype="fp32",
    )
    config._name_or_path = str(folder)
    torch.manual_seed(0)
    model = module.CXRLLAVAModel(config)
    # Larger random weights than the default init, so that logits are far from uniform and
    # greedy decoding does not hinge on bf16 ties.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith("norm.weight") or "ln_" in name and name.endswith("weight"):
                parameter.copy_(1 + 0.1 * noise)
            else:
                parameter.copy_(0.15 * noise)
    model.save_pretrained(str(folder), safe_serialization=True, max_shard_size="300KB")


def images() -> list[np.ndarray]:
    """Deterministic 8-bit grey test images with structure at the borders."""
    rng = np.random.default_rng(5)
    out = []
    for rows, cols in IMAGE_SHAPES:
        yy, xx = np.mgrid[0:rows, 0:cols]
        base = 128 + 60 * np.sin(xx / 3.0) * np.cos(yy / 5.0) + rng.normal(0, 20, (rows, cols))
        out.append(np.clip(base, 0, 255).astype(np.uint8))
    return out


class _Float32Torch:
    """``torch`` as seen by the upstream module, with ``bfloat16`` meaning float32.

    The upstream code casts to ``torch.bfloat16`` by name; with this in place of the module's
    ``torch`` the same code runs in float32, so the model can be compared without bf16
    rounding.
    """

    bfloat16 = torch.float32

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


@torch.no_grad()
def run(module: Any, folder: Path, out: Path) -> None:
    """Record every stage of the upstream inference path, in bf16 (as published) and in
    float32."""
    arrays: dict[str, np.ndarray] = {}
    record: dict[str, Any] = {}
    for precision in ("bf16", "fp32"):
        if precision == "fp32":
            module.torch = _Float32Torch()
        model = module.CXRLLAVAModel.from_pretrained(str(folder)).eval()
        if precision == "fp32":
            model = model.float()
        record.update(_stages(module, model, precision, arrays))
    np.savez(out / "upstream.npz", **arrays)  # type: ignore[arg-type]  # (numpy stub)
    (out / "upstream.json").write_text(json.dumps(record, indent=2))


def _stages(
    module: Any, model: Any, precision: str, arrays: dict[str, np.ndarray]
) -> dict[str, Any]:
    from PIL import Image

    tokenizer = model.tokenizer
    chat = [
        {"role": "system", "content": "You are a helpful radiologist. Try to interpret chest x "
         "ray image and answer to the question that user provides."},
        {"role": "user", "content": "<image>\nWrite a radiologic report on the given chest "
         "radiograph, including information about atelectasis, cardiomegaly, consolidation, "
         "pulmonary edema, pleural effusion, and pneumothorax.\n"},
    ]
    prompt = model.apply_chat_template(chat)
    input_ids = model.tokenizer_image_token(
        prompt, tokenizer, module.IMAGE_TOKEN_INDEX, return_tensors="pt"
    ).unsqueeze(0)
    arrays["input_ids"] = input_ids[0].numpy()
    greedy: list[list[int]] = []
    for number, image8 in enumerate(images()):
        # As generate_cxr_repsonse: PIL image -> 'L' -> (H, W, 1) array -> image processor.
        grey = np.array(Image.fromarray(image8, mode="L").convert("L"))[..., None]
        pixels = model.vision_tower.image_processor(grey, return_tensors="pt")["pixel_values"]
        features = model.encode_images(pixels)
        logits = model(input_ids=input_ids, images=pixels).logits
        stopping = module.KeywordsStoppingCriteria(["</s>"], tokenizer, input_ids)
        output = model.generate(
            inputs=input_ids,
            images=pixels,
            do_sample=False,
            max_new_tokens=MAX_NEW_TOKENS,
            stopping_criteria=[stopping],
            use_cache=True,
            generation_config=model.generation_config,
        )
        new = [int(t) for t in output[0, input_ids.shape[1] :].tolist()]
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id)]
        greedy.append(new)
        arrays[f"image_{number}"] = image8
        arrays[f"pixels_{number}"] = pixels[0].float().numpy()
        arrays[f"features_{precision}_{number}"] = features[0].float().numpy()
        arrays[f"logits_{precision}_{number}"] = logits[0].float().numpy()
    import transformers

    return {
        "prompt": prompt,
        f"greedy_{precision}": greedy,
        "images": len(IMAGE_SHAPES),
        "legacy": getattr(tokenizer, "legacy", None),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        },
        "max_new_tokens": MAX_NEW_TOKENS,
    }


def main() -> int:
    """Build the tiny release and record the upstream stages."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, required=True, help="CXR_LLaVA checkout")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--legacy", choices=["true", "false", "unset"], default="unset")
    parser.add_argument("--repetition-penalty", type=float, dest="penalty")
    args = parser.parse_args()
    sys.path.insert(0, str(args.upstream))
    from CXR_LLAVA_HF import CXR_LLAVA_HF as module

    legacy = {"true": True, "false": False, "unset": None}[args.legacy]
    args.out.mkdir(parents=True, exist_ok=True)
    release = args.out / "release"
    build_release(module, release, legacy, args.penalty)
    run(module, release, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
