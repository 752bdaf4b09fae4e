"""`mammut eval` and its Python API on generated images and a tiny random model."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mammut_search import UserError
from mammut_search.cli import main
from mammut_search.captioned import read_captioned
from mammut_search.eval.evaluation import evaluate, format_table, write_report
from mammut_search.eval.metrics import image_to_text_recall, pair_targets, recall_at_k

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 230), "yellow": (240, 230, 20),
           "black": (0, 0, 0), "white": (255, 255, 255)}


def make_folder(folder):
    """Six coloured squares, each with NAME.txt; 'white' and 'black' share a caption; one file is not an image."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, colour in COLOURS.items():
        Image.new("RGB", (40, 36), colour).save(folder / f"{name}.png")
        caption = "a plain square" if name in ("white", "black") else f"a {name} square"
        (folder / f"{name}.txt").write_text(caption + "\n")
    (folder / "broken.png").write_bytes(b"not a png at all")
    (folder / "broken.txt").write_text("a broken picture\n")
    return folder


def folder_pairs_csv(folder, path):
    """The same pairs as the folder, as a CSV with relative paths."""
    rows = [{"filename": p.name, "text": p.with_suffix(".txt").read_text().splitlines()[0]}
            for p in sorted(folder.glob("*.png"))]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def read_folder(folder):
    """The folder's image-caption pairs."""
    return read_captioned(folder).pairs()


@pytest.fixture
def checkpoint(model, tmp_path):
    model.save(tmp_path / "ckpt")
    return tmp_path / "ckpt"


# ----- evaluating -----


def test_unreadable_and_missing_images_are_listed_and_left_out(model, tmp_path):
    pairs = read_folder(make_folder(tmp_path / "set"))
    pairs.loc[len(pairs)] = [str(tmp_path / "gone.png"), "a missing picture"]
    result = evaluate(pairs, model, max_len=8, progress=False)
    assert sorted(s["image"].rsplit("/", 1)[1] for s in result.skipped) == ["broken.png", "gone.png"]
    assert all(s["reason"] for s in result.skipped)
    counts = result.metrics["counts"]
    assert counts["skipped_images"] == 2 and counts["images"] == 6 and counts["pairs"] == 6
    assert "broken.png" not in " ".join(result.captions["image"])


def test_recall_matches_the_metric_functions_on_the_model_latents(model, tmp_path):
    folder = make_folder(tmp_path / "set")
    pairs = read_folder(folder)
    extra = pd.DataFrame({"image": [str(folder / "red.png")], "caption": ["a crimson square"]})
    pairs = pd.concat([pairs, extra, extra], ignore_index=True)  # a second caption; an exact duplicate row
    result = evaluate(pairs, model, ks=(1, 2, 5), max_len=8, progress=False)
    assert result.metrics["counts"]["duplicate_pairs"] == 1

    good = pairs[~pairs["image"].str.endswith("broken.png")].drop_duplicates()
    images, texts, t2i, i2t = pair_targets(good["image"].tolist(), good["caption"].tolist())
    image_latents = model.encode_image([Image.open(p).convert("RGB") for p in images])
    text_latents = model.encode_text(texts)
    # the report counts every caption row; rows of one text share its rank
    rows_per_text = good["caption"].value_counts()
    text_recall = recall_at_k(text_latents, image_latents, t2i, ks=(1, 2, 5))
    expected = {}
    for k in ("R@1", "R@2", "R@5"):
        per_text = [recall_at_k(text_latents[[i]], image_latents, [t2i[i]], ks=(int(k[2:]),))[k] for i in range(len(texts))]
        expected[k] = sum(hit * rows_per_text[t] for hit, t in zip(per_text, texts)) / len(good)
    assert result.metrics["text_to_image"] == pytest.approx(expected)
    assert len(texts) == len(good) - 1  # only "a plain square" is shared, so the counting matters
    assert set(text_recall) == set(expected)
    assert result.metrics["image_to_text"] == pytest.approx(image_to_text_recall(image_latents, text_latents, i2t, ks=(1, 2, 5)))
    # both rows of the shared caption get the same rank
    shared = result.captions[result.captions["caption"] == "a plain square"]["rank"]
    assert len(shared) == 2 and shared.nunique() == 1


def test_groups_rank_each_caption_among_its_group_only(model, tmp_path):
    pairs = read_folder(make_folder(tmp_path / "set"))
    pairs = pairs[~pairs["image"].str.endswith("broken.png")]
    pairs = pairs.assign(split=[f"g{i}" for i in range(len(pairs))])  # one image per group: always rank 1
    result = evaluate(pairs, model, ks=(1,), group_column="split", captions=False, progress=False)
    assert result.metrics["text_to_image"] == {"R@1": 1.0} and result.metrics["image_to_text"] == {"R@1": 1.0}
    assert sorted(result.metrics["groups"]) == [f"g{i}" for i in range(6)]
    assert "captioning" not in result.metrics


class ExactVectors:
    """A stand-in vector index: exact inner-product search, optionally forgetting some items (like an ANN miss)."""

    description = {"type": "test"}

    def __init__(self, ids, vectors, forget=()):
        self.ids, self.vectors, self.forget = np.asarray(ids), np.asarray(vectors, dtype=np.float32), set(forget)
        self.ntotal = len(ids)

    def search(self, queries, k):
        keep = np.array([i not in self.forget for i in self.ids])
        scores = queries @ self.vectors[keep].T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), self.ids[keep][order]

    def reconstruct(self, ids):
        row = {int(i): r for r, i in enumerate(self.ids)}
        return self.vectors[[row[int(i)] for i in ids]]


class FakeStore:
    def __init__(self, items, vectors):
        self.items, self.vectors = items, vectors


def test_index_recall_beside_exact_search(model, tmp_path):
    folder = make_folder(tmp_path / "set")
    pairs = read_folder(folder)
    paths = [str(folder / f"{name}.png") for name in COLOURS]
    latents = model.encode_image([Image.open(p).convert("RGB") for p in paths]).numpy()
    distractors = np.random.default_rng(0).normal(size=(20, latents.shape[1])).astype(np.float32)
    ids = np.arange(100, 100 + len(paths) + 20)
    items = pd.DataFrame({"id": ids, "path": paths + [f"/elsewhere/{i}.png" for i in range(20)],
                          "status": "ok"})
    exact_store = FakeStore(items, ExactVectors(ids, np.concatenate([latents, distractors])))
    result = evaluate(pairs, model, ks=(1, 5), index=exact_store, captions=False, progress=False)
    section = result.metrics["index"]
    assert section["exact"] == section["approximate"] and section["recall_lost"] == {"R@1": 0.0, "R@5": 0.0}
    assert section["indexed_items"] == 26 and section["eval_images_not_in_index"] == 0
    assert (result.captions["index_rank_exact"] == result.captions["index_rank_approx"]).all()
    assert "index approximate" in format_table(result) and "26 items (test)" in format_table(result)

    # an index of exactly the evaluated images gives the main recall (same latents, same counting)
    only_eval = FakeStore(items.iloc[:6], ExactVectors(ids[:6], latents))
    same = evaluate(pairs, model, ks=(1, 5), index=only_eval, captions=False, progress=False)
    assert same.metrics["index"]["exact"] == same.metrics["text_to_image"]
    assert same.metrics["index"]["captions"] == 6

    # an index that never returns the red square loses its caption, at every k
    lossy_store = FakeStore(items, ExactVectors(ids, np.concatenate([latents, distractors]), forget={100}))
    lossy = evaluate(pairs, model, ks=(1, 5), index=lossy_store, captions=False, progress=False)
    assert lossy.metrics["index"]["exact"] == section["exact"]
    assert lossy.metrics["index"]["recall_lost"]["R@5"] == pytest.approx(
        section["approximate"]["R@5"] - lossy.metrics["index"]["approximate"]["R@5"])
    red = lossy.captions[lossy.captions["caption"] == "a red square"]
    assert red["index_rank_approx"].isna().all() and red["index_rank_exact"].notna().all()
    if red["index_rank_exact"].iloc[0] <= 5:
        assert lossy.metrics["index"]["recall_lost"]["R@5"] > 0


def test_nothing_readable_is_a_user_error(model, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.raises(UserError, match="no usable image-caption pairs"):
        evaluate(pd.DataFrame({"image": [str(tmp_path / "bad.png")], "caption": ["x"]}), model, progress=False)
    with pytest.raises(UserError, match="no image-caption pairs"):
        evaluate(pd.DataFrame({"image": [str(tmp_path / "bad.png")], "caption": ["  "]}), model, progress=False)


# ----- the command line -----


def test_folder_and_csv_give_the_same_report(checkpoint, tmp_path, capsys):
    folder = make_folder(tmp_path / "set")
    csv = folder_pairs_csv(folder, tmp_path / "pairs.csv")
    common = ["--checkpoint", str(checkpoint), "--quiet", "--max-len", "8", "-k", "1", "2", "5", "--device", "cpu"]
    assert main(["eval", "--folder", str(folder), "--out", str(tmp_path / "r1"), *common]) == 0
    assert main(["eval", "--captions", str(csv), "--images-root", str(folder), "--out", str(tmp_path / "r2"), *common]) == 0
    out = capsys.readouterr().out
    assert "text→image" in out and "image→text" in out and "CIDEr-D" in out and "broken.png" in out

    reports = [json.loads((tmp_path / r / "report.json").read_text()) for r in ("r1", "r2")]
    assert reports[0].pop("inputs") != reports[1].pop("inputs")
    assert [r.pop("data")["format"] for r in reports] == ["folder", "table"]
    assert [r.pop("protocol")["name"] for r in reports] == ["folder, all splits, 7 images", "table, all splits, 7 images"]
    assert reports[0] == reports[1]
    assert set(reports[0]["text_to_image"]) == {"R@1", "R@2", "R@5"} and reports[0]["counts"]["images"] == 6
    assert "optimistic" in reports[0]["conventions"]["rank"]
    for name in ("captions.csv", "images.csv"):
        assert (tmp_path / "r1" / name).read_text() == (tmp_path / "r2" / name).read_text()
    captions = pd.read_csv(tmp_path / "r1" / "captions.csv")
    assert list(captions.columns) == ["image", "caption", "rank"] and len(captions) == 6
    assert (tmp_path / "r1" / "recall_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_column_is_one_line_error(checkpoint, tmp_path, capsys):
    pd.DataFrame({"pic": ["a.png"], "words": ["hi"]}).to_csv(tmp_path / "p.csv", index=False)
    assert main(["eval", "--captions", str(tmp_path / "p.csv"), "--checkpoint", str(checkpoint)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "p.csv" in err and "\n" not in err


def test_write_report_without_the_cli(model, tmp_path):
    result = evaluate(read_folder(make_folder(tmp_path / "set")), model, ks=(1,), max_len=8, progress=False)
    paths = write_report(result, tmp_path / "out")
    report = json.loads(paths["report.json"].read_text())
    assert report["captioning"]["CIDEr-D"] >= 0 and 0 <= report["captioning"]["BLEU-4"] <= 1
    images = pd.read_csv(paths["images.csv"])
    assert {"image", "rank", "generated", "cider_d", "references"} <= set(images.columns)


def write_flat_index(directory, paths, latents, checkpoint_sha256):
    """An index directory of `paths` with their latents, in an exact (flat) FAISS index."""
    import faiss

    from mammut_search.index.manifest import Manifest
    from mammut_search.index.store import IndexStore, items_frame
    from mammut_search.index.vectors import VectorIndex

    vectors = VectorIndex(faiss.IndexIDMap2(faiss.IndexFlatIP(latents.shape[1])))
    vectors.add(np.ascontiguousarray(latents, dtype=np.float32), np.arange(len(paths)))
    rows = [dict(id=i, path=str(p), size=1, mtime=0.0, sha256=f"{i:064x}", width=1, height=1, caption="",
                 status="ok") for i, p in enumerate(paths)]
    IndexStore.commit(directory, items_frame(rows), vectors,
                      Manifest(checkpoint_sha256, latents.shape[1], []))


def test_cli_through_an_index_directory(model, checkpoint, tmp_path):
    folder = make_folder(tmp_path / "set")
    paths = [folder / f"{name}.png" for name in COLOURS]
    latents = model.encode_image([Image.open(p).convert("RGB") for p in paths]).numpy()
    write_flat_index(tmp_path / "photos.index", paths, latents, model.checkpoint_sha256)
    assert main(["eval", "--folder", str(folder), "--checkpoint", str(checkpoint), "--index",
                 str(tmp_path / "photos.index"), "--out", str(tmp_path / "r"), "--no-captions", "--quiet"]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    index = report["index"]
    assert index["indexed_items"] == 6 and index["captions"] == 6 and index["eval_images_not_in_index"] == 0
    assert index["description"]["type"] == "flat"
    # a flat index is exact: nothing lost, and the same recall as without the index
    assert index["exact"] == index["approximate"] == report["text_to_image"]
    captions = pd.read_csv(tmp_path / "r" / "captions.csv")
    assert (captions["rank"] == captions["index_rank_exact"]).all()


def test_cli_refuses_an_index_of_another_checkpoint(model, checkpoint, tmp_path, capsys):
    folder = make_folder(tmp_path / "set")
    write_flat_index(tmp_path / "photos.index", [folder / "red.png"], np.eye(1, model.latent_dim), "0" * 64)
    assert main(["eval", "--folder", str(folder), "--checkpoint", str(checkpoint), "--index",
                 str(tmp_path / "photos.index"), "--quiet"]) == 2
    assert "rebuild" in capsys.readouterr().err
