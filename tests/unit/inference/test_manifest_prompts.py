"""Manifest validation, exact prompt strings and provider selection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from workers.inference.manifest import (
    CLIP_MEAN,
    CLIP_STD,
    BundleManifest,
    GenerationSpec,
    PreprocessSpec,
    ProjectorSpec,
    PromptSpec,
    VisionSpec,
    new_device_uid,
)
from workers.inference.prompts import (
    clean_indication,
    cxr_llava_prompt_spec,
    llava_rad_prompt_spec,
    render_prompt,
    split_prompt,
)
from workers.inference.runtime import CPU, CUDA, TENSORRT, select_providers


def llava_rad_like(**overrides: Any) -> BundleManifest:
    fields: dict[str, Any] = dict(
        name="llava-rad",
        version="1.0.0",
        architecture="llava-rad",
        vision=VisionSpec(
            kind="dinov2_vit",
            image_size=518,
            patch_size=14,
            width=768,
            layers=12,
            heads=12,
            in_channels=3,
            select_layer=-2,
            drop_cls=True,
            final_norm=False,
            layerscale=True,
        ),
        projector=ProjectorSpec(kind="mlp2x_gelu", in_dim=768, out_dim=4096),
        preprocess=PreprocessSpec(
            channels=3, size=518, resample="bicubic", mean=list(CLIP_MEAN), std=list(CLIP_STD)
        ),
        prompt=llava_rad_prompt_spec(),
        generation=GenerationSpec(temperature=0.0, top_p=1.0, max_new_tokens=256),
        llm_dtype="float16",
        num_image_tokens=1369,
        licence="Microsoft Research License",
        intended_use="research",
        synthetic=False,
        device_uid=new_device_uid(),
        output_sections="findings",
    )
    fields.update(overrides)
    return BundleManifest(**fields)


def test_manifest_round_trip(tmp_path: Path) -> None:
    manifest = llava_rad_like(files={"encoder.onnx": "0" * 64})
    written = manifest.save(tmp_path)
    assert written == tmp_path / "manifest.json"
    loaded = BundleManifest.load(tmp_path)
    assert loaded == manifest
    assert loaded.vision.num_patches == 1369
    assert loaded.vision.block_count_needed == 11  # output of block index 10
    assert json.loads(written.read_text())["format_version"] == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_image_tokens": 1370}, "num_image_tokens"),
        ({"device_uid": "not-a-uid"}, "device_uid"),
        ({"files": {"../escape": "0" * 64}}, "relative"),
        ({"files": {"encoder.onnx": "xyz"}}, "sha256"),
        ({"architecture": "gpt"}, "architecture"),
    ],
)
def test_manifest_rejects_inconsistent_values(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        llava_rad_like(**overrides)


def test_manifest_rejects_unknown_keys_and_bad_templates(tmp_path: Path) -> None:
    data = json.loads(llava_rad_like().to_json())
    data["surprise"] = 1
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValidationError):
        BundleManifest.load(tmp_path)
    with pytest.raises(ValidationError, match="indication"):
        PromptSpec(style="vicuna_v1", system="s", question="q", question_with_indication="no slot")
    with pytest.raises(ValidationError, match="divisible"):
        VisionSpec(
            kind="openclip_vit", image_size=32, patch_size=16, width=30, layers=1, heads=4,
            in_channels=1, select_layer=-1, drop_cls=True, final_norm=True, layerscale=False,
        )  # fmt: skip


def test_llava_rad_prompt_exact() -> None:
    spec = llava_rad_prompt_spec()
    assert render_prompt(spec) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions. USER: <image>\n"
        "Provide a description of the findings in the radiology image. ASSISTANT:"
    )
    assert render_prompt(spec, "Cough.\nFever 3 days\r\nrule out pneumonia") == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant "
        "gives helpful, detailed, and polite answers to the user's questions. USER: <image>\n"
        "Provide a description of the findings in the radiology image given the following "
        "indication: Cough. Fever 3 days rule out pneumonia ASSISTANT:"
    )
    assert render_prompt(spec, "  \n ") == render_prompt(spec)
    # LLaVA-Rad strips the question: a trailing line break of the indication leaves no space.
    assert render_prompt(spec, "Cough.\n").endswith("indication: Cough. ASSISTANT:")


def test_cxr_llava_prompt_exact() -> None:
    spec = cxr_llava_prompt_spec()
    expected = (
        "<s>[INST] <<SYS>>\nYou are a helpful radiologist. Try to interpret chest x ray image and "
        "answer to the question that user provides.\n<</SYS>>\n\n<image>\nWrite a radiologic "
        "report on the given chest radiograph, including information about atelectasis, "
        "cardiomegaly, consolidation, pulmonary edema, pleural effusion, and pneumothorax. [/INST]"
    )
    assert render_prompt(spec) == expected
    # The template has no indication variant: an indication does not change the prompt.
    assert render_prompt(spec, "dyspnea") == expected
    before, after = split_prompt(expected, "<image>")
    # The literal BOS stays: upstream's tokenizer reads it as a second BOS id.
    assert before.startswith("<s>[INST] <<SYS>>") and after.startswith("\nWrite")


def test_radnode_plain_prompt_and_split_errors() -> None:
    spec = PromptSpec(
        style="radnode_plain",
        system="",
        question="Describe.",
        question_with_indication="Why: {indication}",
    )
    assert render_prompt(spec) == "<image>\nDescribe.\n"
    assert render_prompt(spec, "a\nb") == "<image>\nWhy: a b\n"
    with pytest.raises(ValueError, match="exactly one"):
        split_prompt("no image here", "<image>")
    assert clean_indication("a\r\nb\rc\nd") == "a b c d"


def test_provider_selection_prefers_tensorrt_then_cuda(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    everything = [TENSORRT, CUDA, CPU]
    entries = select_providers(available=everything, trt_cache_dir=tmp_path / "trt")
    assert [e if isinstance(e, str) else e[0] for e in entries] == everything
    trt_options = entries[0][1]  # type: ignore[index]
    assert trt_options["trt_engine_cache_enable"] is True
    assert select_providers(available=[CUDA, CPU]) == [CUDA, CPU]
    assert select_providers(available=[CPU]) == [CPU]
    assert select_providers([CUDA], available=[CPU]) == [CPU]
    monkeypatch.setenv("RADNODE_ORT_PROVIDERS", "CPUExecutionProvider")
    assert select_providers(available=everything) == [CPU]
