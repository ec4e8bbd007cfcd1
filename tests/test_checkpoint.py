"""Checkpoints: safetensors + JSON config, round trips (fp32/fp16/no text/LoRA), and everything they refuse."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mfclip_cli.data.taxonomy import Label
from mfclip_cli.errors import CheckpointError
from mfclip_cli.model import build_model, load_checkpoint, load_preset, read_checkpoint_meta, save_checkpoint
from mfclip_cli.model.checkpoint import FORMAT_VERSION, META_KEY
from mfclip_cli.model.config import LoraConfig, ModelConfig
from mfclip_cli.model.lora import has_lora
from mfclip_cli.model.loss import MFCLIPLoss

LABELS = [Label.real(), Label.fake("entire_synthesis", "gan", "stylegan2"),
          Label.fake("face_swap", "diffusion", "diffface"), Label.real()]


def inputs(b: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(b, 3, 224, 224, generator=g), torch.rand(b, 3, 112, 112, generator=g)


def trained_a_little(model, steps: int = 2):
    """Move every weight (and BN statistics) off its init so a round trip has something to lose."""
    image, noise = inputs()
    y = torch.tensor([lb.y for lb in LABELS])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = MFCLIPLoss(model.cfg.loss)(model(image, noise, LABELS), y, [0, 1, 2, 0])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def outputs(model) -> dict[str, torch.Tensor]:
    image, noise = inputs()
    with torch.no_grad():
        out = {"probs": model.predict_proba(image, noise), "v": model.forward_features(image, noise)}
        if model.text is not None:
            out["t"] = model.encode_labels(LABELS)
    return out


@pytest.fixture(scope="module")
def trained_tiny():
    """Read-only: tests save it but never change it."""
    return trained_a_little(build_model(load_preset("tiny"), seed=0))


@pytest.fixture(scope="module")
def trained_lora():
    """Read-only: a tiny model with LoRA adapters that have moved off zero."""
    return trained_a_little(build_model(replace(load_preset("tiny"), lora=LoraConfig(rank=4, alpha=8)), seed=0))


def test_config_survives_a_dict_round_trip():
    cfg = replace(load_preset("effnet-lite0"), lora=LoraConfig(rank=4, alpha=8, towers=("text",)),
                  prompt_levels=(1, 4), spa="matrix", spa_batch=12)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_fp32_round_trip_gives_identical_outputs(tmp_path, trained_tiny):
    from mfclip_cli.model.metadata import CheckpointMeta, ThresholdRecord

    path = save_checkpoint(tmp_path / "m.safetensors", trained_tiny,
                           meta=CheckpointMeta(threshold=ThresholdRecord(0.42)))
    model, meta = load_checkpoint(path)
    assert not model.training
    assert meta.threshold.value == 0.42 and meta.format_version == FORMAT_VERSION and meta.dtype == "float32"
    assert meta.model.preset == "tiny" and len(meta.sha256) == 64
    before, after = outputs(trained_tiny), outputs(model)
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert torch.equal(model.logit_scale, trained_tiny.logit_scale)


def test_fp16_round_trip_is_close(tmp_path, trained_tiny):
    path = save_checkpoint(tmp_path / "m16.safetensors", trained_tiny, half=True)
    with safe_open(str(path), framework="pt") as fh:
        assert fh.get_tensor("mlp_head.1.weight").dtype == torch.float16
    model, meta = load_checkpoint(path)
    assert meta.dtype == "float16"
    assert model.mlp_head[1].weight.dtype == torch.float32
    before, after = outputs(trained_tiny), outputs(model)
    assert (before["probs"] - after["probs"]).abs().max() < 1e-2
    assert not torch.equal(before["v"], after["v"])  # it really was stored in half precision


def test_inference_only_checkpoint_drops_the_text_tower(tmp_path, trained_tiny):
    full = save_checkpoint(tmp_path / "full.safetensors", trained_tiny)
    slim = save_checkpoint(tmp_path / "slim.safetensors", trained_tiny, include_text=False)
    keys = load_file(str(slim)).keys()
    assert not any(k.startswith("text.") for k in keys)
    assert any(k.startswith("text.") for k in load_file(str(full)))
    assert slim.stat().st_size < full.stat().st_size
    model, meta = load_checkpoint(slim)
    assert meta.model.include_text is False and model.text is None
    before, after = outputs(trained_tiny), outputs(model)
    assert torch.equal(before["probs"], after["probs"]) and torch.equal(before["v"], after["v"])
    with pytest.raises(RuntimeError, match="without its text tower"):
        model.encode_labels(LABELS)


def test_lora_model_is_saved_merged_and_reloads_with_equal_outputs(tmp_path, trained_lora):
    model = trained_lora
    assert any(p.abs().max() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    before = outputs(model)
    path = save_checkpoint(tmp_path / "lora.safetensors", model)
    assert has_lora(model)  # saving merges a copy: the model being trained keeps its adapters
    assert not any("lora" in k for k in load_file(str(path)))
    loaded, meta = load_checkpoint(path)
    assert meta.model.lora is None and not has_lora(loaded)
    after = outputs(loaded)
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=1e-5)


def test_training_checkpoint_can_keep_lora_adapters(tmp_path, trained_lora):
    model = trained_lora
    path = save_checkpoint(tmp_path / "resume.safetensors", model, merge=False)
    assert any("lora_B" in k for k in load_file(str(path)))
    loaded, meta = load_checkpoint(path)
    assert meta.model.lora.rank == 4 and has_lora(loaded)
    before, after = outputs(model), outputs(loaded)
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_architecture_mismatch_names_both_models(tmp_path, trained_tiny):
    path = save_checkpoint(tmp_path / "tiny.safetensors", trained_tiny)
    load_checkpoint(path, expect=load_preset("tiny"))  # the same architecture is accepted
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, expect=load_preset("effnet-lite0"))
    msg = str(err.value)
    assert "'tiny'" in msg and "'effnet-lite0'" in msg and "tf_efficientnet_lite0" in msg
    with pytest.raises(CheckpointError, match="spa=none"):
        load_checkpoint(path, expect=replace(load_preset("tiny"), spa="none"))


class _Marker:
    """Unpickling this object creates a file: proof that a loader ran pickle."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_loading_never_unpickles(tmp_path, writer):
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Marker(proof))).close()
    assert proof.exists()  # the payload is live: unpickling it would leave a marker

    marker = tmp_path / "pwned"
    path = tmp_path / "model.safetensors"
    payload = {"state_dict": {"w": torch.zeros(2)}, "x": _Marker(marker)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    for load in (load_checkpoint, read_checkpoint_meta):
        with pytest.raises(CheckpointError, match="not a safetensors checkpoint.*never unpickles"):
            load(path)
    assert not marker.exists()


def test_refuses_wrong_format_version_missing_metadata_and_missing_file(tmp_path, trained_tiny):
    good = save_checkpoint(tmp_path / "good.safetensors", trained_tiny)
    tensors = load_file(str(good))
    meta = read_checkpoint_meta(good).to_json()
    meta["format_version"] = FORMAT_VERSION + 1
    future = tmp_path / "future.safetensors"
    save_file(tensors, str(future), metadata={META_KEY: json.dumps(meta)})
    with pytest.raises(CheckpointError, match=f"format {FORMAT_VERSION + 1}.*reads format {FORMAT_VERSION}"):
        load_checkpoint(future)

    plain = tmp_path / "plain.safetensors"
    save_file(tensors, str(plain))
    with pytest.raises(CheckpointError, match="not an mfclip checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_tensors_that_do_not_fit_the_declared_config_are_a_checkpoint_error(tmp_path, trained_tiny):
    good = save_checkpoint(tmp_path / "good.safetensors", trained_tiny)
    tensors = load_file(str(good))
    meta = read_checkpoint_meta(good).to_json()
    meta["model"]["noise"]["width"] = 32  # declared noise branch no longer matches the stored tensors
    meta["model"]["noise"]["heads"] = 2
    lying = tmp_path / "lying.safetensors"
    save_file(tensors, str(lying), metadata={META_KEY: json.dumps(meta)})
    with pytest.raises(CheckpointError, match="does not match its declared architecture"):
        load_checkpoint(lying)

    del tensors["mlp_head.1.weight"]
    partial = tmp_path / "partial.safetensors"
    save_file(tensors, str(partial), metadata={META_KEY: json.dumps(read_checkpoint_meta(good).to_json())})
    with pytest.raises(CheckpointError, match="missing.*mlp_head.1.weight"):
        load_checkpoint(partial)


def test_threshold_record_keeps_how_the_threshold_was_chosen_and_checks_its_value():
    from mfclip_cli.errors import CheckpointError
    from mfclip_cli.model.metadata import CheckpointMeta

    model = load_preset("tiny").to_dict()
    meta = CheckpointMeta.from_json({"model": model, "threshold": {"value": 0.4, "method": "eer", "eer": 0.1}},
                                    "m.safetensors")
    assert meta.decision_threshold().to_json() == {"value": 0.4, "method": "eer", "eer": 0.1}
    bare = CheckpointMeta.from_json({"model": model, "threshold": 0.3}, "m.safetensors")
    assert bare.decision_threshold().to_json() == {"value": 0.3, "method": "unknown"}
    with pytest.raises(CheckpointError, match="m.safetensors records no decision threshold"):
        CheckpointMeta.from_json({"model": model}, "m.safetensors").decision_threshold()
    with pytest.raises(CheckpointError, match="m.safetensors: the threshold 1.5 is outside"):
        CheckpointMeta.from_json({"model": model, "threshold": {"value": 1.5}}, "m.safetensors")


def test_checkpoint_meta_round_trips_through_its_json(tmp_path, trained_tiny):
    from mfclip_cli.faces.types import CropPolicy
    from mfclip_cli.model.metadata import (
        CheckpointMeta,
        InputSpec,
        TaxonomyRecord,
        ThresholdRecord,
        TrainingRecord,
    )

    meta = CheckpointMeta(
        threshold=ThresholdRecord(0.3, "target_fpr", target_fpr=0.05, fpr=0.04, tpr=None),
        input=InputSpec(CropPolicy(min_face=30), trained_tiny.cfg.preprocess),
        training=TrainingRecord(protocol="in-domain", seed=3, file_hashes16=("ab", "cd"), extra={"new": 1}),
        taxonomy=TaxonomyRecord(("real", "stylegan2")), extra={"note": "kept"})
    path = save_checkpoint(tmp_path / "m.safetensors", trained_tiny, meta=meta)
    back = read_checkpoint_meta(path)
    assert back.threshold == meta.threshold and back.input == meta.input
    assert back.training == meta.training and back.taxonomy == meta.taxonomy and back.extra == {"note": "kept"}
    assert back.to_json()["threshold"] == {"value": 0.3, "method": "target_fpr", "target_fpr": 0.05,
                                           "fpr": 0.04, "tpr": None}
    assert CheckpointMeta.from_json(back.to_json(), str(path)) == back
