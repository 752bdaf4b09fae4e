"""The semantic token: ImageNet class probabilities x class-name embeddings, read by the pool, the decoder and
the latent; label-only training examples; the fused retrieval vectors and their query gate."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mammut_search import load_model
from mammut_search.inference import MammutModel
from mammut_search.model.config import CAPTION_MAX_LEN, ImageEncoderConfig, MammutConfig
from mammut_search.model.decoding import generate
from mammut_search.model.mammut import NUM_CLASSES, MaMMUT
from mammut_search.model.minilm import MINILM_DIM, sentence_encoder
from mammut_search.model.naming import NAMING_MARGIN, class_names
from mammut_search.model.retrieval import query_gate, query_retrieval_vectors, query_sentences
from mammut_search.model.tokenizer import train_bpe
from mammut_search.testing import tiny_model
from mammut_search.train import prepare
from mammut_search.train.loop import train
from test_train import corpus, read_log, tiny_recipe  # noqa: F401 (corpus is a fixture)

SEMANTIC = MINILM_DIM  # the class names' and queries' sentence space


def semantic_config(vocab_size: int, **changes) -> MammutConfig:
    image = ImageEncoderConfig(kind="efficientnet_lite0", image_size=64, grid=2, classifier_token=True)
    fields = dict(vocab_size=vocab_size, dim=32, depth=2, heads=2, dim_head=16, ff_mult=2, num_img_queries=4,
                  dim_latents=16, max_text_len=16, image_grid_latent=True, semantic_dim=SEMANTIC,
                  fusion_weight=0.0, fusion_gate=0.0, fusion_gate_center=0.5, image_encoder=image)
    return MammutConfig(**{**fields, **changes})


@pytest.fixture(scope="module")
def model() -> MammutModel:
    tokenizer = train_bpe(["a red apple", "an octopus", "a cat on a mat"] * 4, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    net = MaMMUT(semantic_config(tokenizer.vocab_size, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
                                 eos_id=tokenizer.eos_id, fusion_weight=1.0, fusion_gate=10.0))
    net.class_embeddings.normal_()
    return MammutModel(net, tokenizer, device="cpu")


def test_semantic_vector_is_the_top_k_mix_of_class_embeddings(model):
    net = model.net
    features = net.image_features(torch.randn(2, 3, 64, 64))
    assert features.shape == (2, 2 * 2 + 1, 1280)  # the 2x2 grid, then the classifier token
    _, semantic = net.split_features(features)
    probs = net.image_encoder.class_logits(features[:, -1]).softmax(dim=-1)
    top, index = probs.topk(net.config.semantic_top_k, dim=-1)
    expected = torch.stack([(w / w.sum()) @ net.class_embeddings[i] for w, i in zip(top, index)])
    assert torch.allclose(semantic, expected, atol=1e-5)


def test_every_reader_sees_the_semantic_token(model):
    net = model.net
    features = net.image_features(torch.randn(2, 3, 64, 64))
    other = torch.randn(2, SEMANTIC)
    cls, tokens = net.pool_image(features)
    cls2, tokens2 = net.pool_image(features, semantic=other)
    assert tokens.shape[1] == net.config.num_img_queries + 1  # the decoder attends to the token itself
    assert not torch.allclose(cls, cls2) and not torch.allclose(tokens[:, -1], tokens2[:, -1])
    assert not torch.allclose(net.contrastive_image_latents(cls, features),
                              net.contrastive_image_latents(cls, features, semantic=other))


def test_fused_vectors_are_one_inner_product_of_both_parts(model):
    net, c = model.net, model.net.config
    images = model.encode_image(torch.randn(3, 3, 64, 64))
    queries = model.encode_text(["a red apple", "an octopus"])
    assert images.shape == (3, c.dim_latents + SEMANTIC) == (3, model.latent_dim) and queries.shape[1] == images.shape[1]
    assert torch.allclose(images.norm(dim=-1), torch.ones(3), atol=1e-5)
    # the query's first part is its contrastive latent, up to the norm of the whole
    ids = model.tokenizer.encode(["a red apple"], c.max_text_len)
    plain = net.text_latents(ids)
    fused = query_retrieval_vectors(net, ids, query_sentences(net, ["a red apple"]))
    assert torch.allclose(fused[:, :c.dim_latents] / fused[:, :c.dim_latents].norm(), plain, atol=1e-5)


def test_a_querys_semantic_part_is_its_own_minilm_embedding_scaled_by_its_gate(model):
    net, c = model.net, model.net.config
    texts = ["a red apple", "an octopus in the sea", "tabby cat"]
    queries = model.encode_text(texts)
    semantic = queries[:, c.dim_latents:]
    expected = sentence_encoder().encode(texts, progress=False)
    assert torch.allclose(F.normalize(semantic, dim=-1), expected, atol=1e-4)
    # its length relative to the latent part is the fusion weight times the gate
    ratio = semantic.norm(dim=-1) / queries[:, :c.dim_latents].norm(dim=-1)
    assert torch.allclose(ratio, c.fusion_weight * query_gate(net, expected)[:, 0], atol=1e-4)


def test_a_checkpoint_with_the_retired_query_estimate_head_still_loads(model, tmp_path):
    from safetensors.torch import load_file, save_file

    model.save(tmp_path / "old")
    weights = load_file(str(tmp_path / "old" / "model.safetensors"))
    save_file({**weights, "text_to_semantic.weight": torch.zeros(SEMANTIC, model.config.dim_latents)},
              str(tmp_path / "old" / "model.safetensors"))
    loaded = load_model(tmp_path / "old", device="cpu")
    assert torch.allclose(loaded.encode_text(["an octopus"]), model.encode_text(["an octopus"]), atol=1e-5)


def test_query_gate_opens_for_class_names_only(model):
    net = model.net
    classes = F.normalize(net.class_embeddings[:3], dim=-1)
    away = F.normalize(torch.randn(3, SEMANTIC) - 5 * classes.mean(0), dim=-1)
    named, unnamed = query_gate(net, classes), query_gate(net, away)
    assert (named > 0.99).all() and (unnamed < named).all()


def test_checkpoint_keeps_classifier_and_class_embeddings(model, tmp_path):
    model.save(tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt", device="cpu")
    assert torch.equal(loaded.net.class_embeddings, model.net.class_embeddings)
    pixels = torch.randn(2, 3, 64, 64)
    assert torch.allclose(loaded.encode_image(pixels), model.encode_image(pixels), atol=1e-5)
    assert loaded.caption(pixels) == model.caption(pixels)


def confident(model: MammutModel, class_index: int | None) -> MammutModel:
    """A copy of the model whose classifier gives `class_index` all the probability (None: none to any class)."""
    net = copy.deepcopy(model.net)
    head = net.image_encoder.net._fc
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        if class_index is not None:
            head.bias[class_index] = 50.0
    return MammutModel(net, model.tokenizer, device="cpu")


def decoder_ids(model: MammutModel, pixels: torch.Tensor) -> torch.Tensor:
    """The decoder's own greedy caption ids of the images (b n)."""
    return generate(model.net, model.decoder_tokens(model.image_features(pixels)), max_len=CAPTION_MAX_LEN)


def decoder_captions(model: MammutModel, pixels: torch.Tensor) -> list[str]:
    """The decoder's own greedy captions of the images."""
    return [model.tokenizer.decode(row) for row in decoder_ids(model, pixels).tolist()]


def image_latents_toward(model: MammutModel, direction: torch.Tensor) -> None:
    """Make every image's contrastive latent the unit vector along `direction` (l)."""
    net = model.net
    with torch.no_grad():
        for layer in (net.img_to_latents, net.img_grid_to_latents, net.semantic_to_latents):
            layer.weight.zero_()
        net.img_grid_to_latents.bias.copy_(direction)


def test_a_confident_class_names_the_image_only_where_its_name_agrees_with_the_image(model):
    pixels = torch.randn(1, 3, 64, 64)
    sure, name = confident(model, 3), class_names()[3]
    caption_ids = decoder_ids(sure, pixels)
    caption = sure.tokenizer.decode(caption_ids[0].tolist())
    caption_latent = sure.net.text_latents(caption_ids)[0]
    name_latent = sure.net.text_latents(sure.tokenizer.encode([name], sure.config.max_text_len))[0]
    assert (caption_latent - name_latent).norm() > 2 * NAMING_MARGIN  # the two texts' latents differ enough
    image_latents_toward(sure, name_latent - caption_latent)
    assert sure.caption(pixels) == [name]
    image_latents_toward(sure, caption_latent - name_latent)
    assert sure.caption(pixels) == [caption] != [name]


def test_without_a_confident_class_the_caption_is_the_decoder_s(model):
    pixels = torch.randn(4, 3, 64, 64)
    unsure = confident(model, None)  # every class at 1/1000
    unsure.net.text_to_latents.weight.data.zero_()  # every text's latent alike: agreement does not decide
    assert unsure.caption(pixels) == decoder_captions(unsure, pixels)


def test_an_index_holds_the_class_name_where_the_model_names_the_image(model, tmp_path):
    from index_builder.build import BuildOptions, build_index
    from search_testkit import write_collection

    sure = confident(model, 7)
    sure.net.text_to_latents.weight.data.zero_()  # every text's latent alike: the name agrees as well as any
    write_collection(tmp_path / "images", 4)
    store = build_index([tmp_path / "images"], tmp_path / "index", sure,
                        options=BuildOptions(batch_size=4, workers=0, progress=False))
    assert list(store.items["caption"]) == [class_names()[7]] * 4 == sure.caption(torch.randn(4, 3, 64, 64))


def test_a_model_without_the_semantic_token_keeps_the_decoder_s_captions():
    plain = tiny_model()
    pixels = torch.randn(3, 3, 32, 32)
    assert plain.caption(pixels) == decoder_captions(plain, pixels)


@pytest.mark.slow
def test_label_only_examples_train_and_export(corpus, tmp_path, monkeypatch):  # noqa: F811
    names = [[f"class {i}", f"kind {i % 7}"] for i in range(NUM_CLASSES)]
    monkeypatch.setattr(prepare, "imagenet_label_texts", lambda config: ([n[0] for n in names], names))
    import mammut_search.train.loop as loop
    monkeypatch.setattr(loop, "imagenet_label_texts", lambda config: ([n[0] for n in names], names))
    monkeypatch.setattr(loop, "class_embeddings", lambda config, progress: torch.randn(NUM_CLASSES, SEMANTIC))
    config = tiny_recipe(tmp_path, steps=12, label_weight=1.0, token_keep=0.75,
                         export=f"'{tmp_path / 'export'}'")
    config.model.update(semantic_dim=SEMANTIC, fusion_weight=1.0,
                        image_encoder={"kind": "efficientnet_lite0", "image_size": 64, "grid": 2,
                                       "classifier_token": True})
    train(config, tmp_path / "run", frame=corpus, progress=False)
    logged = [e for e in read_log(tmp_path / "run") if "labels" in e]
    assert logged and all(e["labels"] > 0 for e in logged)
    exported = load_model(tmp_path / "export", device="cpu")
    assert exported.latent_dim == exported.config.dim_latents + SEMANTIC
    assert exported.net.class_embeddings.abs().sum() > 0  # filled before training, saved with the weights
    assert len(exported.encode_text(["class 3"])[0]) == exported.latent_dim


def test_label_texts_use_names_people_say():
    chain = ["retriever", "sporting dog", "dog", "canine", "carnivore", "placental"]
    assert prepare.label_hypernyms(chain, 2) == ["retriever", "dog"]
    assert prepare.label_hypernyms(["domestic cat", "cat", "feline"], 2) == ["domestic cat", "cat"]
    assert prepare.label_hypernyms([], 2) == []


def test_style_shares_set_each_style_s_part_of_the_draws():
    import numpy as np
    import pandas as pd

    from mammut_search.train.data import ConceptBalancedSampler
    from mammut_search.train.recipe import TrainConfig

    styles = ["clipart"] * 900 + ["emoji"] * 100  # one image per concept: clip art would take 90% uniformly
    train_rows = pd.DataFrame({"style": styles})
    image_concept = np.arange(1000)
    weights = prepare.style_weights(TrainConfig(style_shares={"clipart": 0.3}), train_rows, image_concept, 1000)
    sampler = ConceptBalancedSampler([np.array([i]) for i in range(1000)], [np.array([0])] * 1000, image_concept,
                                     batch_size=10, images_per_concept=1, concept_weights=weights)
    drawn = np.concatenate([sampler.global_batch(step).images.numpy() for step in range(300)])
    assert abs((drawn < 900).mean() - 0.3) < 0.05
