"""Model inputs as the published inference code builds them.

Centre-crop arithmetic per upstream, CXR-LLaVA's double BOS under both ``legacy`` tokenizer
settings (checked against the SentencePiece library itself), tokenizer settings kept in the
bundle and applied at load, the generation settings read from ``generation_config.json``,
and the explicit opt-in for open_clip training checkpoints.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.checkpoints import build_llava_rad, write_sentencepiece_tokenizer
from tests.unit.inference.conftest import Imported
from workers.inference.bundle import LoadedBundle
from workers.inference.importers import (
    CheckpointFormatError,
    load_tokenizer_from,
    tokenizer_settings_from,
)
from workers.inference.importers.cxr_llava import upstream_generation
from workers.inference.importers.llava_rad import (
    VISION_CHECKPOINT_NAME,
    UntrustedCheckpointError,
    import_llava_rad,
    load_vision_checkpoint,
)
from workers.inference.llm import load_llm, tokenize_prompt
from workers.inference.manifest import BundleManifest, GenerationSpec, PreprocessSpec, TokenizerSpec
from workers.inference.preprocess import PIL_RESAMPLE, center_crop, to_model_input
from workers.inference.prompts import cxr_llava_prompt_spec, render_prompt, split_prompt

sentencepiece = pytest.importorskip("sentencepiece")


# --------------------------------------------------------------------------------------------
# Centre crop
# --------------------------------------------------------------------------------------------


def test_floor_and_round_crops_differ_when_the_remainder_is_three() -> None:
    ramp = Image.fromarray(np.arange(11, dtype=np.uint8)[:, None].repeat(8, axis=1), mode="L")
    # 11 - 8 = 3: torchvision rounds 1.5 to 2, the Hugging Face processor floors to 1.
    assert np.asarray(center_crop(ramp, 8, "floor"))[0, 0] == 1
    assert np.asarray(center_crop(ramp, 8, "round"))[0, 0] == 2
    # 13 - 8 = 5: 2.5 rounds half to even, to 2, the same as the floor.
    odd = Image.fromarray(np.arange(13, dtype=np.uint8)[:, None].repeat(8, axis=1), mode="L")
    assert np.asarray(center_crop(odd, 8, "floor"))[0, 0] == 2
    assert np.asarray(center_crop(odd, 8, "round"))[0, 0] == 2


def test_model_input_crops_as_the_bundle_says() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (105, 100), dtype=np.uint8)  # resized to 64 x 67
    spec = PreprocessSpec(channels=1, size=64, resample="lanczos", mean=[0.5], std=[0.25])
    resized = np.asarray(Image.fromarray(image, mode="L").resize((64, 67), PIL_RESAMPLE["lanczos"]))
    floor = to_model_input(image, spec.model_copy(update={"crop_offset": "floor"}))
    rounded = to_model_input(image, spec)
    assert np.array_equal(floor[0], (resized[1:65].astype(np.float32) / 255 - 0.5) / 0.25)
    assert np.array_equal(rounded[0], (resized[2:66].astype(np.float32) / 255 - 0.5) / 0.25)


def test_cxr_llava_bundles_crop_by_floor_also_when_written_before_the_setting(
    cxr_imported: Imported, tmp_path: Path
) -> None:
    manifest = BundleManifest.load(cxr_imported.bundle_dir)
    assert manifest.preprocess.crop_offset == "floor"
    data = json.loads(manifest.to_json())
    del data["preprocess"]["crop_offset"], data["tokenizer"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    old = BundleManifest.load(tmp_path)
    assert old.preprocess.crop_offset == "floor"
    assert old.tokenizer == TokenizerSpec(legacy=True, add_bos_token=True, add_eos_token=False)
    llava_rad = dict(data, architecture="llava-rad")
    (tmp_path / "manifest.json").write_text(json.dumps(llava_rad))
    assert BundleManifest.load(tmp_path).preprocess.crop_offset == "round"


# --------------------------------------------------------------------------------------------
# Tokenizer settings and the double BOS
# --------------------------------------------------------------------------------------------


def _processor(folder: Path, *, dummy_prefix: bool) -> Any:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
    proto.ParseFromString((folder / "tokenizer.model").read_bytes())
    proto.normalizer_spec.add_dummy_prefix = dummy_prefix
    return sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())


@pytest.mark.parametrize("legacy", [True, False, None])
def test_cxr_llava_prompt_ids_start_with_two_bos_as_upstream(
    tmp_path: Path, legacy: bool | None
) -> None:
    write_sentencepiece_tokenizer(tmp_path, legacy=legacy)
    settings = tokenizer_settings_from(tmp_path)
    assert settings.legacy is (True if legacy is None else legacy)
    tokenizer = load_tokenizer_from(tmp_path)
    before_text, after_text = split_prompt(render_prompt(cxr_llava_prompt_spec()), "<image>")
    prompt = tokenize_prompt(tokenizer, before_text, after_text, settings)

    # The reference is the SentencePiece library: upstream's tokenizer adds BOS, reads the
    # literal "<s>" as a second one, then encodes the rest on its own: with the word-start
    # marker in front when legacy, without it otherwise.
    rest = before_text[len("<s>") :]
    processor = _processor(tmp_path, dummy_prefix=settings.legacy)
    assert list(prompt.before) == [1, 1, *processor.encode(rest)]
    assert list(prompt.after) == _processor(tmp_path, dummy_prefix=True).encode(after_text)
    third = tokenizer.convert_ids_to_tokens(prompt.before[2])
    assert third.startswith("▁") if settings.legacy else third.startswith("[")


def test_special_token_settings_follow_upstream_tokenizer_image_token(tmp_path: Path) -> None:
    write_sentencepiece_tokenizer(tmp_path)
    tokenizer = load_tokenizer_from(tmp_path)
    plain = tokenize_prompt(tokenizer, "USER: ", "\nDescribe.", TokenizerSpec(legacy=False))
    with_eos = tokenize_prompt(
        tokenizer, "USER: ", "\nDescribe.", TokenizerSpec(legacy=False, add_eos_token=True)
    )
    # Each chunk gets its own EOS; the BOS of the second chunk is dropped.
    assert with_eos.before == (*plain.before, 2) and with_eos.after == (*plain.after, 2)
    no_bos = tokenize_prompt(
        tokenizer, "USER: ", "\nDescribe.", TokenizerSpec(legacy=False, add_bos_token=False)
    )
    assert no_bos.before == plain.before[1:] and no_bos.after == plain.after


def test_tokenizer_settings_are_kept_in_the_bundle_and_applied_at_load(
    cxr_bundle: LoadedBundle, cxr_imported: Imported
) -> None:
    # The CXR-LLaVA fixture's tokenizer_config.json says legacy false.
    assert cxr_bundle.manifest.tokenizer == TokenizerSpec(legacy=False)
    assert cxr_bundle.prompt_tokens().before[:2] == (1, 1)
    llm_dir = cxr_imported.bundle_dir / "llm"
    pieces = {}
    for legacy in (True, False):
        _, tokenizer = load_llm(llm_dir, tokenizer_settings=TokenizerSpec(legacy=legacy))
        ids = tokenizer("<s>[INST]", add_special_tokens=False)["input_ids"]
        pieces[legacy] = tokenizer.convert_ids_to_tokens(ids[1])
    assert pieces[True].startswith("▁") and pieces[False] == "["
    got = cxr_bundle.tokenizer("<s>[INST]", add_special_tokens=False)["input_ids"]
    assert cxr_bundle.tokenizer.convert_ids_to_tokens(got[1]) == pieces[False]


def test_tokenizer_config_with_a_non_boolean_flag_is_refused(tmp_path: Path) -> None:
    write_sentencepiece_tokenizer(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(dict(config, legacy="no")))
    with pytest.raises(CheckpointFormatError, match="legacy"):
        tokenizer_settings_from(tmp_path)


# --------------------------------------------------------------------------------------------
# Generation settings
# --------------------------------------------------------------------------------------------


def test_generation_config_settings_are_read_as_upstream(tmp_path: Path) -> None:
    assert upstream_generation(tmp_path).repetition_penalty == 1.0
    assert upstream_generation(tmp_path).top_k == 50
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "repetition_penalty": 1.3, "top_k": 7})
    )
    spec = upstream_generation(tmp_path)
    assert (spec.temperature, spec.top_p, spec.top_k, spec.repetition_penalty) == (
        0.2, 0.8, 7, 1.3,
    )  # fmt: skip
    (tmp_path / "generation_config.json").write_text(json.dumps({"repetition_penalty": "high"}))
    with pytest.raises(CheckpointFormatError, match="repetition_penalty"):
        upstream_generation(tmp_path)


def test_repetition_penalty_reaches_generation(
    cxr_bundle: LoadedBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[float] = []
    real_generate = cxr_bundle.model.generate

    def recording_generate(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["generation_config"].repetition_penalty)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(cxr_bundle.model, "generate", recording_generate)
    embeds = cxr_bundle.encode(np.zeros((1, 1, 48, 48), np.float32))[0]
    spec = GenerationSpec(temperature=0.0, top_p=1.0, max_new_tokens=24)
    plain = cxr_bundle.generate(embeds, generation=spec).token_ids
    penalised = cxr_bundle.generate(
        embeds, generation=spec.with_overrides({"repetition_penalty": 50.0})
    ).token_ids
    assert seen == [1.0, 50.0]
    # A strong penalty forbids repeats that plain greedy decoding makes.
    assert len(set(plain)) < len(plain)
    assert len(set(penalised)) == len(penalised)


# --------------------------------------------------------------------------------------------
# open_clip training checkpoints
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def training_release(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_llava_rad(tmp_path_factory.mktemp("llava-rad-training"), training_checkpoint=True)


def test_training_checkpoint_is_refused_without_the_opt_in(training_release: Any) -> None:
    path = training_release.llava_rad_dir / VISION_CHECKPOINT_NAME
    with pytest.raises(UntrustedCheckpointError) as caught:
        load_vision_checkpoint(path, trust_pickle=False)
    message = str(caught.value)
    assert "--trust-checkpoint-pickle" in message and "\n" not in message
    assert isinstance(caught.value.__cause__, pickle.UnpicklingError)
    loaded = load_vision_checkpoint(path, trust_pickle=True)
    assert loaded["args"].epochs == 12
    assert torch.is_tensor(loaded["state_dict"]["module.logit_scale"])


def test_import_command_names_the_flag_and_imports_with_it(
    training_release: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from node.cli.main import main

    out = tmp_path / "bundle"
    common = ["model", "import-llava-rad", "--llava-rad", str(training_release.llava_rad_dir),
              "--base", str(training_release.base_dir)]  # fmt: skip
    assert main([*common, str(out)]) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert last_line.startswith("radnode: biomedclipcxr_518_checkpoint.pt holds pickled")
    assert "--trust-checkpoint-pickle" in last_line
    assert not out.exists()
    # The opt-in covers the vision checkpoint only; the other pickles still load weights-only.
    bundle_dir = import_llava_rad(
        training_release.llava_rad_dir,
        training_release.base_dir,
        out,
        export_onnx=False,
        trust_checkpoint_pickle=True,
    )
    assert BundleManifest.load(bundle_dir).architecture == "llava-rad"
    assert main([*common, "--trust-checkpoint-pickle", "--overwrite", str(out)]) == 0
