"""Our open_clip MaMMUT against the reference (LAION's open_clip fork, pinned commit): fixtures made by
tools/openmammut_fixtures.py hold random weights of small B/32- and L/14-layout configs, inputs and the reference's
outputs. Converted here, our network must give the same latents and logits (1e-5) and the same greedy captions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mammut_search.errors import CheckpointError
from mammut_search.model.decoding import generate
from mammut_search.model.open_clip_convert import (config_from_open_clip, open_clip_network, read_open_clip_config,
                                                   read_open_clip_weights)

FIXTURES = Path(__file__).parent / "fixtures" / "openmammut"
LAYOUTS = {  # layout: (weights file, config file)
    "b32_small": ("open_clip_pytorch_model.bin", "mammut_ViT-b32_small.json"),
    "l14_small": ("open_clip_model.safetensors", "open_clip_config.json"),
}
TOLERANCE = 1e-5


def converted(layout: str):
    """The fixture's weights and config through the converter -> (network, reference tensors, metadata)."""
    weights, config_file = (FIXTURES / layout / name for name in LAYOUTS[layout])
    config = config_from_open_clip(*read_open_clip_config(config_file), source=str(config_file))
    reference = load_file(str(FIXTURES / layout / "reference.safetensors"))
    with open(FIXTURES / layout / "reference.safetensors", "rb") as f:  # the header's metadata
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))["__metadata__"]
    # the small fixture vocabularies end with <sot>, <eot> (the real one: 49406, 49407)
    config.bos_id, config.eos_id = int(header["sot"]), int(header["eot"])
    net = open_clip_network(read_open_clip_weights(weights), config, source=str(weights))
    return net, reference, header


@pytest.mark.parametrize("layout", LAYOUTS)
def test_latents_and_logits_equal_the_reference(layout):
    net, ref, _ = converted(layout)
    with torch.no_grad():
        features = net.image_features(ref["pixels"].float())
        image_latents = net.image_latents(features)
        text_latents = net.text_latents(ref["texts"])
        _, image_tokens = net.pool_image(features)
        paired = ref["texts"][: len(image_tokens)]
        logits, _ = net.decode(paired, net.cross_attention_kv(image_tokens))
    torch.testing.assert_close(image_latents, ref["image_latents"], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(text_latents, ref["text_latents"], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(logits, ref["logits"], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_text_latents_average_every_context_position(layout):
    """The reference pools over the whole padded context: ids given short are padded to it, not masked."""
    net, ref, _ = converted(layout)
    texts = ref["texts"]
    shortest = int((texts != 0).sum(dim=1).min())
    with torch.no_grad():
        short = net.text_latents(texts[:1, :shortest])
    torch.testing.assert_close(short, ref["text_latents"][:1], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_captions_equal_the_reference(layout, use_cache):
    net, ref, meta = converted(layout)
    with torch.no_grad():
        _, image_tokens = net.pool_image(net.image_features(ref["pixels"].float()))
    ids = generate(net, image_tokens, max_len=int(meta["caption_max_len"]), min_len=int(meta["caption_min_len"]),
                   no_repeat_ngram=int(meta["no_repeat_ngram"]), use_cache=use_cache)
    expected = ref["caption_ids"]
    assert ids[:, : expected.shape[1]].tolist() == expected.tolist()


def test_caption_log_probs_read_the_caption_up_to_its_end(layout="l14_small"):
    """Teacher-forced scores equal the logits' log-softmax at the caption's tokens, and nothing after <eot>."""
    net, ref, _ = converted(layout)
    text = ref["texts"][:2]
    with torch.no_grad():
        _, tokens = net.pool_image(net.image_features(ref["pixels"].float()))
        scores = net.caption_log_probs(text, tokens)
    expected = ref["logits"][:, :-1].log_softmax(dim=-1).gather(-1, text[:, 1:, None])[..., 0]
    ends = (text[:, 1:] == net.config.eos_id).float().argmax(dim=1)
    for row, end in enumerate(ends.tolist()):
        torch.testing.assert_close(scores[row, : end + 1], expected[row, : end + 1], atol=1e-4, rtol=0)
        assert scores[row, end + 1:].abs().sum() == 0


def test_a_file_of_another_model_is_refused_with_its_missing_and_extra_names(tmp_path):
    weights, config_file = (FIXTURES / "l14_small" / name for name in LAYOUTS["l14_small"])
    tensors = load_file(str(weights))
    tensors.pop("map_viz2txt_kv")
    tensors["text.extra_head.weight"] = torch.zeros(2)
    save_file(tensors, str(tmp_path / "other.safetensors"))
    config = config_from_open_clip(*read_open_clip_config(config_file), source=str(config_file))
    with pytest.raises(CheckpointError) as error:
        open_clip_network(read_open_clip_weights(tmp_path / "other.safetensors"), config, source="other.safetensors")
    message = str(error.value)
    assert "map_viz2txt_kv" in message and "text.extra_head.weight" in message and "\n" not in message


def test_a_pickle_that_runs_code_is_not_read(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"weights": Payload()}, tmp_path / "evil.bin")
    with pytest.raises(CheckpointError, match="evil.bin"):
        read_open_clip_weights(tmp_path / "evil.bin")


@pytest.mark.parametrize("change, named", [
    ({"vision_cfg": {"pool_type": "tok"}}, "pool_type"),
    ({"vision_cfg": {"ls_init_value": 1e-5}}, "ls_init_value"),
    ({"quick_gelu": True}, "quick_gelu"),
    ({"text_cfg": {"rope": True}}, "text_cfg.rope"),
])
def test_configs_asking_for_what_is_not_implemented_are_refused(change, named):
    model_cfg, preprocess_cfg = read_open_clip_config(FIXTURES / "l14_small" / "open_clip_config.json")
    for key, value in change.items():
        if isinstance(value, dict):
            model_cfg[key] = {**model_cfg[key], **value}
        else:
            model_cfg[key] = value
    with pytest.raises(CheckpointError, match=named):
        config_from_open_clip(model_cfg, preprocess_cfg, source="cfg.json")


def test_preprocessing_comes_from_the_hub_config():
    config = config_from_open_clip(*read_open_clip_config(FIXTURES / "l14_small" / "open_clip_config.json"),
                                   source="hub")
    assert config.image_encoder.mean == (0.48145466, 0.4578275, 0.40821073)
    assert config.image_encoder.centre_crop and config.image_encoder.image_size == 56
    bare = config_from_open_clip(*read_open_clip_config(FIXTURES / "b32_small" / "mammut_ViT-b32_small.json"),
                                 source="bare")
    assert bare.image_encoder.std == (0.26862954, 0.26130258, 0.27577711)  # open_clip's default
    assert not bare.has_mlp and bare.cross_step == 2


def test_preprocessing_equals_open_clips_transform():
    """Images whose short side is under four times the square: open_clip's resize, centre crop and normalisation
    (the fixture was made with this project's Pillow, and matches exactly; another Pillow's bicubic may round a
    pixel one grey level apart, allowed here). A larger image is first box-reduced by a power of two, as for every
    checkpoint here: within three grey levels."""
    from PIL import Image

    from mammut_search.inference import preprocess_images
    from mammut_search.model.openmammut import OpenClipVisionConfig

    folder = FIXTURES / "preprocess"
    reference = load_file(str(folder / "reference.safetensors"))
    config = OpenClipVisionConfig(image_size=32, patch_size=16)  # open_clip's default mean and std
    grey_level = 1.01 / 255 / min(config.std)  # one step of a uint8 pixel, normalised
    for name, expected in reference.items():
        image = Image.open(folder / f"{name}.png")
        ours = preprocess_images([image], config)[0]
        reduced = min(image.size) >= 4 * config.image_size  # our pipeline box-reduces these first
        atol = (3 if reduced else 1) * grey_level
        torch.testing.assert_close(ours, expected, atol=atol, rtol=0, msg=f"{name}.png")
    assert any(min(Image.open(folder / f"{n}.png").size) >= 4 * config.image_size for n in reference)


def test_a_training_checkpoint_of_the_fork_reads_as_its_state_dict(tmp_path):
    """open_clip's training writes {"epoch", "state_dict" (names prefixed "module." under DDP), "optimizer"}."""
    weights = FIXTURES / "l14_small" / "open_clip_model.safetensors"
    tensors = load_file(str(weights))
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in tensors.items()}, "optimizer": {}},
               tmp_path / "epoch_3.pt")
    read = read_open_clip_weights(tmp_path / "epoch_3.pt")
    assert read.keys() == tensors.keys() and all(torch.equal(read[k], tensors[k]) for k in tensors)


def test_an_input_not_a_multiple_of_the_patch_drops_the_remainder_as_open_clip_does():
    """openMaMMUT-L/14 at 512 px has 36 x 36 patches of 14 (504 px read): the convolution drops the rest."""
    from mammut_search.model.openmammut import OpenMammut
    from mammut_search.testing import TINY_OPEN_CLIP_CONFIG

    def network(image_size):
        cfg = {**TINY_OPEN_CLIP_CONFIG, "vision_cfg": {**TINY_OPEN_CLIP_CONFIG["vision_cfg"], "image_size": image_size}}
        return OpenMammut(config_from_open_clip(cfg, {}, source="tiny")).eval()

    torch.manual_seed(0)
    wide, exact = network(40), network(32)  # patch 16: 2 x 2 patches for both
    exact.load_state_dict(wide.state_dict())
    pixels = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(wide.image_features(pixels), exact.image_features(pixels[:, :, :32, :32]))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_beam_search_with_the_cache_equals_it_without(layout):
    """Beams reorder the self-attention cache at every step: the result is the same as recomputing each prefix."""
    net, ref, meta = converted(layout)
    with torch.no_grad():
        _, image_tokens = net.pool_image(net.image_features(ref["pixels"].float()))
    cached, recomputed = (generate(net, image_tokens, beam_width=3, max_len=int(meta["caption_max_len"]),
                                   use_cache=use_cache) for use_cache in (True, False))
    assert torch.equal(cached, recomputed)
