"""Recall@k on hand-built score matrices, BLEU-4 and CIDEr-D against numbers worked out by hand."""

import math

import numpy as np
import pytest
import torch

from mammut_search.eval.metrics import (
    bleu4, cider_d, cider_d_per_item, image_to_text_recall, pair_targets, ranks_from_scores, recall_at_k,
    recall_curve, recall_from_ranks, retrieval_ranks, tokenize,
)

# ----- retrieval -----


def test_ranks_count_strictly_higher_scores():
    scores = np.array([
        [0.9, 0.1, 0.5],  # right item 0 is the best -> rank 1
        [0.9, 0.1, 0.5],  # right item 2: one item (0.9) above -> rank 2
        [0.9, 0.1, 0.5],  # right item 1: two above -> rank 3
    ])
    assert ranks_from_scores(scores, [{0}, {2}, {1}]).tolist() == [1, 2, 3]


def test_ties_are_optimistic():
    # the right item ties with two wrong ones: nothing is strictly higher -> rank 1
    scores = np.array([[0.5, 0.5, 0.5, 0.1], [0.7, 0.5, 0.5, 0.1]])
    assert ranks_from_scores(scores, [{1}, {2}]).tolist() == [1, 2]  # row 2: only 0.7 is strictly higher


def test_several_right_items_take_the_best_one():
    scores = np.array([[0.2, 0.9, 0.4, 0.8]])
    assert ranks_from_scores(scores, [{0, 3}]).tolist() == [2]  # 0.8 is the best right one; only 0.9 above it


def test_a_query_without_right_items_is_refused():
    with pytest.raises(ValueError, match="query 1"):
        ranks_from_scores(np.eye(2), [{0}, set()])


def test_recall_at_k_on_latents_with_known_answers():
    # 2-d latents; images on the unit circle at 0, 90, 180 degrees
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    texts = torch.tensor([
        [1.0, 0.0],    # image 0 first -> rank 1
        [0.6, 0.8],    # scores 0.6, 0.8, -0.6: image 1 first -> rank 1
        [0.8, 0.6],    # scores 0.8, 0.6, -0.8: right image 2 is last -> rank 3
        [0.0, -1.0],   # scores 0, -1, 0: right image 0 ties with image 2, nothing strictly above -> rank 1
    ])
    targets = [{0}, {1}, {2}, {0}]
    assert retrieval_ranks(texts, images, targets).tolist() == [1, 1, 3, 1]
    assert recall_at_k(texts, images, targets, ks=(1, 2, 3)) == {"R@1": 0.75, "R@2": 0.75, "R@3": 1.0}


def test_chunking_does_not_change_ranks():
    rng = np.random.default_rng(0)
    queries, gallery = rng.normal(size=(37, 8)).astype(np.float32), rng.normal(size=(11, 8)).astype(np.float32)
    targets = [{int(i) % 11} for i in range(37)]
    assert np.array_equal(retrieval_ranks(queries, gallery, targets, chunk=5),
                          retrieval_ranks(queries, gallery, targets, chunk=1000))


def test_duplicate_captions_count_any_of_their_images():
    # images 0 and 1 both have the caption "a dog"; image 2 has "a cat"
    images, texts, t2i, i2t = pair_targets(["x.jpg", "y.jpg", "z.jpg", "z.jpg"], ["a dog", "a dog", "a cat", "kitty"])
    assert images == ["x.jpg", "y.jpg", "z.jpg"] and texts == ["a dog", "a cat", "kitty"]
    assert t2i == [{0, 1}, {2}, {2}] and i2t == [{0}, {0}, {1, 2}]
    image_latents = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # "a dog" points at image 1; it is right although image 0 carries it too
    text_latents = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])
    assert recall_at_k(text_latents, image_latents, t2i, ks=(1,)) == {"R@1": 2 / 3}  # "kitty" -> image 0, wrong


def test_image_to_text_needs_one_caption_in_the_top_k():
    image_latents = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text_latents = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, -1.0], [0.0, 1.0]])
    # image 0: texts scored 1, .9, 0, 0; its texts are {2, 3} (score 0, tie) -> two strictly above -> rank 3
    # image 1: texts scored 0, .1, -1, 1; its text {3} is the best -> rank 1
    i2t = [{2, 3}, {3}]
    assert retrieval_ranks(image_latents, text_latents, i2t).tolist() == [3, 1]
    assert image_to_text_recall(image_latents, text_latents, i2t, ks=(1, 3)) == {"R@1": 0.5, "R@3": 1.0}


def test_recall_curve_matches_recall_from_ranks():
    ranks = np.array([1, 2, 2, 5, 40])
    curve = recall_curve(ranks, 6)
    assert curve.tolist() == pytest.approx([0.2, 0.6, 0.6, 0.6, 0.8, 0.8])
    assert recall_from_ranks(ranks, [5])["R@5"] == curve[4]
    assert math.isnan(recall_from_ranks([], [1])["R@1"])


# ----- BLEU-4 -----


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A Cat, on the mat.") == ["a", "cat", "on", "the", "mat"]


def test_bleu_identical_is_one():
    assert bleu4(["a b c d e"], [["a b c d e"]]) == pytest.approx(1.0)


def test_bleu_worked_example():
    # candidate a b c d e f, reference a b c d x f (both 6 words -> no brevity penalty)
    # 1-grams: a b c d f match, e not -> 5/6;  2-grams ab bc cd match of ab bc cd de ef -> 3/5
    # 3-grams: abc bcd match of abc bcd cde def -> 2/4;  4-grams: abcd of abcd bcde cdef -> 1/3
    # BLEU = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/12) ** 0.25 = 0.537284965...
    assert bleu4(["a b c d e f"], [["a b c d x f"]]) == pytest.approx((1 / 12) ** 0.25)
    assert bleu4(["a b c d e f"], [["a b c d x f"]]) == pytest.approx(0.5372849659)


def test_bleu_clips_repeated_words():
    # candidate "the the the the the": each 'the' clipped to 2 (the most in one reference), 1-gram 2/5;
    # no bigram "the the" in the references -> precision 0 -> BLEU 0
    assert bleu4(["the the the the the"], [["the cat the mat", "a dog"]]) == 0.0


def test_bleu_brevity_penalty_uses_the_closest_reference():
    # candidate 4 words, all n-grams found in the reference of 6 words -> precisions 1
    # only reference has 6 words: BP = exp(1 - 6/4) = exp(-0.5) = 0.60653...
    assert bleu4(["a b c d"], [["a b c d e f"]]) == pytest.approx(math.exp(-0.5))
    # with a second reference of 3 words, the closest length is 3 (|4-3| = 1 < |4-6| = 2) -> no penalty
    assert bleu4(["a b c d"], [["a b c d e f", "x y z"]]) == pytest.approx(1.0)
    # lengths 3 and 5 are both 1 away from 4: the shorter wins -> no penalty
    assert bleu4(["a b c d"], [["a b c d e", "x y z"]]) == pytest.approx(1.0)


def test_bleu_is_corpus_level():
    # counts are summed over the corpus before taking precisions:
    # pair 1: "a b c d" vs "a b c d": 4/4, 3/3, 2/2, 1/1
    # pair 2: "a b c d" vs "a b c x": 3/4, 2/3, 1/2, 0/1
    # corpus: 7/8, 5/6, 3/4, 1/2; lengths 8 vs 8 -> BLEU = (7/8 * 5/6 * 3/4 * 1/2) ** 0.25
    expected = (7 / 8 * 5 / 6 * 3 / 4 * 1 / 2) ** 0.25  # = 0.6979...
    assert bleu4(["a b c d", "a b c d"], [["a b c d"], ["a b c x"]]) == pytest.approx(expected)


# ----- CIDEr-D -----


def test_cider_worked_example():
    # two images; references: A = ["a cat"], B = ["a dog"]; log(#documents) = log 2 = L
    # document frequency: "a" 2, "cat" 1, "dog" 1, "a cat" 1, "a dog" 1
    # candidate A "a cat": 1-gram vector {a: 1*(L - log 2) = 0, cat: L}, reference A the same -> cosine 1
    #   2-gram {"a cat": L} both -> 1;  3- and 4-grams empty -> 0; length penalty exp(0) = 1
    #   CIDEr = 10 * mean(1, 1, 0, 0) / 1 reference = 5.0
    # candidate B "a cat" vs "a dog": shared "a" has weight 0, nothing else shared -> 0
    per_item = cider_d_per_item(["a cat", "a cat"], [["a cat"], ["a dog"]])
    assert per_item.tolist() == pytest.approx([5.0, 0.0])
    assert cider_d(["a cat", "a cat"], [["a cat"], ["a dog"]]) == pytest.approx(2.5)


def test_cider_length_penalty_and_norms():
    # references: A = ["a cat sits"], B = ["a dog"]; L = log 2
    # df: a 2; cat, sits, dog, "a cat", "cat sits", "a dog", "a cat sits" 1 each
    # candidate A "a cat": 1-grams {a: 0, cat: L} norm L; reference {a: 0, cat: L, sits: L} norm L*sqrt2
    #   overlap min(L, L) * L = L^2 -> 1/sqrt2;  2-grams {"a cat": L} vs {"a cat": L, "cat sits": L} -> 1/sqrt2
    #   3-grams: candidate has none -> 0;  length penalty exp(-(2-3)^2 / (2*6^2)) = exp(-1/72)
    #   CIDEr = 10 * (2/sqrt2)/4 * exp(-1/72) = 10 * sqrt2/4 * exp(-1/72) = 3.48677...
    expected = 10 * math.sqrt(2) / 4 * math.exp(-1 / 72)
    assert cider_d_per_item(["a cat"], [["a cat sits"]])[0] != pytest.approx(expected)  # one document: idf 0
    assert cider_d_per_item(["a cat", "x"], [["a cat sits"], ["a dog"]])[0] == pytest.approx(expected)
    assert expected == pytest.approx(3.48677, abs=1e-5)


def test_cider_averages_over_references_and_clips_counts():
    # references for A: ["a cat", "a cat"], B: ["a dog"]; df and weights as in the worked example
    # candidate "a cat": each reference gives 10 * mean(1, 1, 0, 0) = 5 -> mean over 2 references = 5
    assert cider_d_per_item(["a cat", "x"], [["a cat", "a cat"], ["a dog"]])[0] == pytest.approx(5.0)
    # candidate "cat cat": 1-gram {cat: 2L} norm 2L; reference {cat: L}; clipped overlap min(2L, L) * L = L^2
    #   -> L^2 / (2L * L) = 1/2; no shared 2-grams; same length -> 10 * mean(.5, 0, 0, 0) = 1.25
    assert cider_d_per_item(["cat cat", "x"], [["a cat"], ["a dog"]])[0] == pytest.approx(1.25)
