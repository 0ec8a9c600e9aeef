"""LLaVA-Rad import: encoder parity with an independent forward, LoRA merge, greedy decoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.fixtures.checkpoints import LlavaRadFixture, build_llava_rad
from tests.unit.inference.conftest import Imported
from tests.unit.inference.reference import (
    dinov2_llava_rad_reference,
    greedy_reference,
    upstream_prompt_ids,
)
from workers.inference.bundle import LoadedBundle, load_bundle
from workers.inference.importers import CheckpointFormatError
from workers.inference.importers.llava_rad import import_llava_rad, load_lora_adapter
from workers.inference.manifest import CLIP_MEAN, CLIP_STD, BundleManifest


def _pixels(size: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def test_manifest_describes_llava_rad(llava_rad_imported: Imported) -> None:
    manifest = BundleManifest.load(llava_rad_imported.bundle_dir)
    assert manifest.architecture == "llava-rad"
    assert manifest.vision.kind == "dinov2_vit" and manifest.vision.select_layer == -2
    assert (
        manifest.vision.drop_cls and not manifest.vision.final_norm and manifest.vision.layerscale
    )
    assert manifest.projector.kind == "mlp2x_gelu"
    assert manifest.preprocess.channels == 3 and manifest.preprocess.resample == "bicubic"
    assert manifest.preprocess.mean == list(CLIP_MEAN) and manifest.preprocess.std == list(CLIP_STD)
    assert manifest.prompt.style == "vicuna_v1"
    assert manifest.generation.greedy and manifest.generation.max_new_tokens == 256
    assert manifest.llm_dtype == "float16" and manifest.output_sections == "findings"
    assert (
        "Microsoft Research License" in manifest.licence
        and "not for clinical use" in manifest.licence
    )
    assert manifest.num_image_tokens == 9
    assert set(manifest.files) >= {
        "encoder.onnx",
        "encoder.safetensors",
        "llm/config.json",
        "llm/model.safetensors",
    }
    fractions = [f for _, f in llava_rad_imported.progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_encoder_matches_independent_reference(
    llava_rad_source: LlavaRadFixture, llava_rad_imported: Imported
) -> None:
    pixels = _pixels(llava_rad_source.image_size)
    expected = dinov2_llava_rad_reference(
        llava_rad_source.trunk,
        llava_rad_source.projector,
        torch.from_numpy(pixels),
        heads=llava_rad_source.heads,
        select_layer=llava_rad_source.select_layer,
    ).numpy()
    onnx_bundle = load_bundle(llava_rad_imported.bundle_dir, encoder_backend="onnx")
    torch_bundle = load_bundle(llava_rad_imported.bundle_dir, encoder_backend="torch")
    from_onnx = onnx_bundle.encode(pixels)
    from_torch = torch_bundle.encode(pixels)
    assert from_onnx.shape == expected.shape == (2, 9, 64)
    np.testing.assert_allclose(from_torch, expected, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(from_onnx, expected, atol=1e-4, rtol=1e-4)
    # The dynamic batch axis gives the same rows as one-by-one encoding.
    np.testing.assert_allclose(onnx_bundle.encode(pixels[1]), from_onnx[1:2], atol=1e-5)


def test_lora_merged_into_base(
    llava_rad_source: LlavaRadFixture, llava_rad_imported: Imported
) -> None:
    merged = load_file(str(llava_rad_imported.bundle_dir / "llm" / "model.safetensors"))
    assert not any(k.endswith("inv_freq") for k in merged)
    assert set(merged) == set(llava_rad_source.base_state)
    scale = llava_rad_source.lora_scale
    assert scale == 2.0
    for module, (a, b) in llava_rad_source.lora.items():
        base = llava_rad_source.base_state[module + ".weight"].float()
        expected = (base + scale * (b.float() @ a.float())).half()
        got = merged[module + ".weight"]
        assert got.dtype == torch.float16
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert not torch.equal(got, base.half())
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        assert torch.equal(merged[name], llava_rad_source.base_state[name])
    config = json.loads((llava_rad_imported.bundle_dir / "llm" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"


def test_lora_keys_with_adapter_name(tmp_path: Path) -> None:
    a, b = torch.ones(2, 3), torch.ones(5, 2)
    torch.save(
        {
            "base_model.model.model.layers.0.mlp.up_proj.lora_A.default.weight": a,
            "base_model.model.model.layers.0.mlp.up_proj.lora_B.default.weight": b,
        },
        tmp_path / "adapter_model.bin",
    )
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 16, "use_rslora": True, "bias": "none"}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    pairs = load_lora_adapter(tmp_path)
    assert list(pairs) == ["model.layers.0.mlp.up_proj"]
    assert pairs["model.layers.0.mlp.up_proj"].scale == pytest.approx(16 / 2**0.5)
    torch.save(
        {"base_model.model.model.layers.0.mlp.up_proj.lora_embedding_A": a},
        tmp_path / "adapter_model.bin",
    )
    with pytest.raises(CheckpointFormatError, match="unexpected adapter tensor"):
        load_lora_adapter(tmp_path)


def test_greedy_generation_matches_reference_loop(llava_rad_bundle: LoadedBundle) -> None:
    embeds = llava_rad_bundle.encode(_pixels(42, batch=1, seed=4))[0]
    prompt = llava_rad_bundle.build_prompt("Fever.\nCough")
    assert "indication: Fever. Cough ASSISTANT:" in prompt
    before, after = upstream_prompt_ids(llava_rad_bundle.tokenizer, prompt)
    expected = greedy_reference(
        llava_rad_bundle.model, before, torch.from_numpy(embeds), after, eos=2, max_new_tokens=24
    )
    result = llava_rad_bundle.generate(embeds, indication="Fever.\nCough", max_new_tokens=24)
    assert result.token_ids == expected
    assert result.prompt_tokens == len(before) + 9 + len(after)
    assert result.new_tokens == len(expected)
    assert (
        result.text == llava_rad_bundle.tokenizer.decode(expected, skip_special_tokens=True).strip()
    )
    tokens = llava_rad_bundle.prompt_tokens("Fever.\nCough")
    assert list(tokens.before) == before and list(tokens.after) == after
    assert tokens.before.count(llava_rad_bundle.tokenizer.bos_token_id) == 1


def test_batched_generation_equals_single(llava_rad_bundle: LoadedBundle) -> None:
    embeds = llava_rad_bundle.encode(_pixels(42, batch=2, seed=8))
    indications = [None, "Short of breath after a long flight, rule out embolism"]
    batch = llava_rad_bundle.generate_batch(embeds, indications=indications, max_new_tokens=12)
    singles = [
        llava_rad_bundle.generate(embeds[i], indication=indications[i], max_new_tokens=12)
        for i in range(2)
    ]
    assert [r.token_ids for r in batch] == [r.token_ids for r in singles]
    assert batch[0].prompt_tokens < batch[1].prompt_tokens
    with pytest.raises(ValueError, match="generate_batch"):
        llava_rad_bundle.generate(embeds)


def test_base_with_sentencepiece_model_only(tmp_path: Path) -> None:
    import sentencepiece

    source = build_llava_rad(tmp_path / "src", base_tokenizer="spm", vision_layers=2)
    assert not (source.base_dir / "tokenizer.json").exists()
    out = import_llava_rad(
        source.llava_rad_dir, source.base_dir, tmp_path / "bundle", export_onnx=False
    )
    bundle = load_bundle(out, encoder_backend="torch")
    processor = sentencepiece.SentencePieceProcessor(
        model_file=str(source.base_dir / "tokenizer.model")
    )
    text = "The heart size is normal.\nNo pleural effusion."
    assert bundle.tokenizer.encode(text, add_special_tokens=False) == processor.encode(text)
    assert bundle.manifest.vision.block_count_needed == 1


def test_import_rejects_unsupported_layouts(
    llava_rad_source: LlavaRadFixture, tmp_path: Path
) -> None:
    import shutil

    broken = tmp_path / "llava-rad"
    shutil.copytree(llava_rad_source.llava_rad_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    config["mm_use_im_start_end"] = True
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointFormatError, match="start/end"):
        import_llava_rad(broken, llava_rad_source.base_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
