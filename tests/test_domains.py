"""Generalisation evaluation on the corpus's validation splits (styles, objects, photos)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from PIL import Image

from mammut_search.eval.domains import caption_hits, content_words, domain_metrics, evaluate_domains, format_domains_table
from mammut_search.testing import tiny_model


def test_content_words_drop_stop_and_template_words_and_stem_plurals():
    assert content_words("A picture of Two black Cats.") == {"cat"}
    assert content_words("boxes, flies and glasses on a bus") == {"box", "fly", "glass", "bus"}
    assert content_words("the 3 iris") == {"iris"}


def test_caption_hits_need_a_shared_content_word_with_any_reference():
    hits = caption_hits(["a cat on a mat", "a picture of a dog", "an emoji"],
                        [["a kitten", "cats: pet"], ["a wolf"], ["an emoji of a fox"]])
    assert hits.tolist() == [True, False, False]


def test_domain_metrics_rank_distinct_main_captions_against_every_image():
    e = torch.eye(2)
    text_latents = {"a cat": e[0], "a dog": e[1]}
    images = torch.stack([e[0], e[1], e[1]])  # the second image (a cat) looks like a dog
    result = domain_metrics(images, ["a cat", "a cat", "a dog"], lambda texts: torch.stack([text_latents[t] for t in texts]),
                            generated=["a cat", "a dog", "a dog"], references=[["a cat"], ["a cat"], ["a dog"]], ks=[1, 2])
    assert (result["images"], result["queries"]) == (3, 2)
    assert result["t2i"] == {"R@1": 1.0, "R@2": 1.0}  # "a cat" finds image 0; "a dog" ties images 1 and 2
    assert result["i2t"]["R@1"] == pytest.approx(2 / 3)  # image 1 gets "a dog" first
    assert result["caption_hit"] == pytest.approx(2 / 3)


@pytest.fixture()
def manifest(tmp_path) -> pd.DataFrame:
    rows = []
    for i, (split, caption) in enumerate([("val", "octopus"), ("val_unseen", "cook"), ("val_photos", "a cat"),
                                          ("val_photos", "a cat"), ("val_photos", "a rocket"), ("train", "a dog")]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (40, 30), (30 * i, 255 - 30 * i, 90)).save(path)
        rows.append({"path": str(path), "captions": [caption, "keyword"], "split": split})
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows.append({"path": str(tmp_path / "broken.png"), "captions": ["a boat"], "split": "val_photos"})
    return pd.DataFrame(rows)


def test_domains_cover_each_validation_split_and_skip_unreadable_images(manifest):
    results = evaluate_domains(tiny_model(), manifest, ks=[1, 5])
    assert set(results) == {"styles", "photos"}  # no val_objects rows; train rows never evaluated
    assert (results["styles"]["images"], results["styles"]["queries"]) == (2, 2)
    photos = results["photos"]
    assert (photos["images"], photos["queries"], photos["skipped"]) == (3, 2, 1)
    assert photos["t2i"]["R@5"] == 1.0  # two queries, three images: every right image is in the top 5
    assert 0.0 <= photos["i2t"]["R@1"] <= 1.0 and 0.0 <= photos["caption_hit"] <= 1.0
    table = format_domains_table(results)
    assert table.splitlines()[0].split()[:3] == ["domain", "images", "queries"]
    assert "photos" in table and "styles" in table and "t2i R@5" in table


def test_eval_cli_runs_the_domains(manifest, tmp_path, capsys):
    from mammut_search.cli import main

    tiny_model().save(tmp_path / "ckpt")
    manifest = manifest.assign(name="x", concept_id=[str(i) for i in range(len(manifest))])
    manifest.to_parquet(tmp_path / "manifest.parquet", index=False)
    assert main(["eval", "--domains", str(tmp_path / "manifest.parquet"), "--checkpoint", str(tmp_path / "ckpt"),
                 "--no-captions", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "styles" in out and "photos" in out and "caption hit" in out


def test_held_out_styles_are_each_a_set_of_all_their_images_and_their_mean_is_the_styles_domain(manifest):
    manifest = manifest.assign(style=["fx", "fx", "photos", "photos", "photos", "mono", "photos"],
                               split=["val", "val_unseen", "val_photos", "val_photos", "val_photos", "train",
                                      "val_photos"])
    results = evaluate_domains(tiny_model(), manifest, ks=[1, 5], styles=["fx", "mono", "absent"])
    assert set(results) == {"style:fx", "style:mono", "styles", "photos"}
    assert results["style:fx"]["images"] == 2 and results["style:mono"]["images"] == 1  # whatever their split
    mean = (results["style:fx"]["t2i"]["R@1"] + results["style:mono"]["t2i"]["R@1"]) / 2
    assert results["styles"]["t2i"]["R@1"] == pytest.approx(mean)


def test_eval_cli_marks_the_styles_a_checkpoint_trained_on(manifest, tmp_path, capsys):
    import json

    from mammut_search.cli import main

    tiny_model().save(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["training"] = {"data": {"styles_per_split": {"train": ["openmoji-black", "google"]}}}
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    styles = ["iconify-fxemoji", "openmoji-black", "openmoji-black", "x", "x", "x", "google"]
    manifest = manifest.assign(name="x", concept_id=[str(i) for i in range(len(manifest))], style=styles)
    manifest.to_parquet(tmp_path / "manifest.parquet", index=False)
    assert main(["eval", "--domains", str(tmp_path / "manifest.parquet"), "--checkpoint", str(tmp_path / "ckpt"),
                 "--no-captions", "--device", "cpu"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "(trained on)" in rows["style:openmoji-black"]
    assert "(trained on)" not in rows["style:iconify-fxemoji"]
