"""Bundle writing from in-memory models, verification and tamper detection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.fixtures.checkpoints import tiny_llama_config, write_tokenizer_json
from tests.unit.inference.conftest import Imported
from workers.inference.bundle import (
    BundleError,
    load_bundle,
    reexport_onnx,
    verify_bundle,
    write_bundle,
)
from workers.inference.encoder import build_image_encoder
from workers.inference.manifest import (
    BundleManifest,
    GenerationSpec,
    PreprocessSpec,
    ProjectorSpec,
    PromptSpec,
    VisionSpec,
    new_device_uid,
)
from workers.inference.vision import init_vision_weights


def _synthetic_manifest() -> BundleManifest:
    vision = VisionSpec(
        kind="openclip_vit", image_size=32, patch_size=16, width=32, layers=2, heads=2,
        in_channels=1, select_layer=-1, drop_cls=True, final_norm=True, layerscale=False,
    )  # fmt: skip
    return BundleManifest(
        name="radnode-synth",
        version="0.1.0",
        architecture="radnode-synth",
        vision=vision,
        projector=ProjectorSpec(kind="mlp2x_gelu", in_dim=32, out_dim=64),
        preprocess=PreprocessSpec(channels=1, size=32, resample="bilinear", mean=[0.5], std=[0.25]),
        prompt=PromptSpec(
            style="radnode_plain",
            system="",
            question="Report.",
            question_with_indication="Report for {indication}.",
        ),
        generation=GenerationSpec(temperature=0.0, top_p=1.0, max_new_tokens=8),
        llm_dtype="float32",
        num_image_tokens=4,
        licence="synthetic demo",
        intended_use="demonstration only",
        synthetic=True,
        device_uid=new_device_uid(),
        output_sections="findings_impression",
    )


def test_write_bundle_from_model_objects(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    vocab = write_tokenizer_json(tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "tok"), local_files_only=True)
    config = {
        k: v
        for k, v in tiny_llama_config(vocab).items()
        if k not in ("architectures", "model_type", "torch_dtype")
    }
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**config))
    manifest = _synthetic_manifest()
    encoder = build_image_encoder(manifest.vision, manifest.projector)
    init_vision_weights(encoder, torch.Generator().manual_seed(1))
    events: list[float] = []
    out = write_bundle(
        tmp_path / "bundle",
        manifest,
        encoder,
        model,
        tokenizer,
        progress=lambda _m, f: events.append(f),
    )
    assert events[-1] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "tok"]  # no staging left behind
    report = verify_bundle(out)
    assert report.ok, report.errors
    loaded = load_bundle(out)
    assert loaded.describe()["synthetic"] is True and loaded.encoder_backend == "onnx"
    assert loaded.build_prompt("pain") == "<image>\nReport for pain.\n"
    result = loaded.draft(np.zeros((1, 32, 32), np.float32), indication="pain")
    assert 0 < result.new_tokens <= 8 and result.prompt_tokens == len(
        loaded.prompt_tokens("pain").before
    ) + 4 + len(loaded.prompt_tokens("pain").after)
    with pytest.raises(ValueError, match="does not match encoder input"):
        loaded.encode(np.zeros((1, 1, 16, 16), np.float32))

    # A prepared HF folder without a tokenizer object (as the synthetic trainer writes it).
    folder = tmp_path / "prepared"
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    moved = write_bundle(tmp_path / "from-folder", manifest, encoder, folder, None, move_llm=True)
    assert not folder.exists()
    generation_config = json.loads((moved / "llm" / "generation_config.json").read_text())
    assert generation_config["eos_token_id"] == 2 and generation_config["do_sample"] is False
    assert verify_bundle(moved, check_parity=False).ok
    with pytest.raises(BundleError, match="not empty"):
        write_bundle(out, manifest, encoder, model, tokenizer)
    write_bundle(out, manifest, encoder, model, tokenizer, export_onnx=False, overwrite=True)
    assert not (out / "encoder.onnx").exists()
    with pytest.raises(BundleError, match="encoder_backend"):
        load_bundle(out)
    assert not verify_bundle(out).ok  # parity cannot be checked without the ONNX graph
    reexport_onnx(out)
    assert verify_bundle(out).ok
    assert load_bundle(out, encoder_backend="torch").encode(
        np.zeros((1, 32, 32), np.float32)
    ).shape == (1, 4, 64)


@pytest.fixture
def bundle_copy(llava_rad_imported: Imported, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(llava_rad_imported.bundle_dir, target)
    return target


def test_verify_passes_on_imported_bundle(bundle_copy: Path) -> None:
    report = verify_bundle(bundle_copy)
    assert report.ok, report.errors
    assert report.parity_max_abs_error is not None and report.parity_max_abs_error < 1e-4
    assert report.parity_limit is not None and report.parity_max_abs_error <= report.parity_limit
    assert report.to_dict()["providers"] == ["CPUExecutionProvider"]
    report.raise_for_errors()


def test_verify_catches_tampered_encoder_weights(bundle_copy: Path) -> None:
    weights_path = bundle_copy / "encoder.safetensors"
    state = load_file(str(weights_path))
    state["projector.2.bias"] = state["projector.2.bias"] + 0.5
    save_file(state, str(weights_path))
    report = verify_bundle(bundle_copy)
    assert not report.ok
    assert report.mismatched == ["encoder.safetensors"]
    assert report.parity_max_abs_error == pytest.approx(0.5, abs=1e-3)
    assert any("parity" in e for e in report.errors)
    with pytest.raises(BundleError, match="altered files: encoder.safetensors"):
        report.raise_for_errors()


def test_verify_catches_llm_edits_missing_and_unlisted_files(bundle_copy: Path) -> None:
    config_path = bundle_copy / "llm" / "config.json"
    config_path.write_text(config_path.read_text().replace('"rms_norm_eps"', '"rms_norm_eps" '))
    (bundle_copy / "llm" / "tokenizer_config.json").unlink()
    (bundle_copy / "llm" / "extra.py").write_text("print('x')\n")
    report = verify_bundle(bundle_copy, check_parity=False)
    assert not report.ok
    assert report.mismatched == ["llm/config.json"]
    assert report.missing == ["llm/tokenizer_config.json"]
    assert report.unexpected == ["llm/extra.py"]
    assert report.parity_max_abs_error is None


def test_verify_reports_unreadable_manifest(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    report = verify_bundle(tmp_path)
    assert not report.ok and "manifest" in report.errors[0]
