"""Caption decoding (batched greedy and beam search) with a key/value cache, and query likelihood.

The cross-attention keys/values are computed once per image; the self-attention keys/values of earlier
tokens are cached, so each step runs the decoder on one new token per sequence.
"""

from __future__ import annotations

import torch

from mammut_search.model.mammut import MaMMUT


def block_repeated_ngrams(log_probs: torch.Tensor, sequences: torch.Tensor, ngram: int) -> torch.Tensor:
    """Forbid (set to -inf) every next token that would repeat an n-gram already in its sequence.

    log_probs (b v), sequences (b n): the windows of the last n-1 tokens are matched against all earlier ones.
    """
    if ngram <= 0 or sequences.shape[1] < ngram:
        return log_probs
    windows = sequences.unfold(1, ngram, 1)  # (b w ngram)
    last = sequences[:, sequences.shape[1] - ngram + 1 :]  # (b ngram-1)
    repeats = (windows[:, :, :-1] == last[:, None, :]).all(dim=-1)  # (b w)
    penalty = torch.where(repeats, -float("inf"), 0.0).to(log_probs.dtype)
    return log_probs.scatter_add(1, windows[:, :, -1], penalty)


def token_penalties(net: MaMMUT, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Additive log-probability guards (v), built once per call of `generate`: "open" forbids <pad> and <bos>
    (a caption never emits them), "short" also <eos> (before min_len), "finished" leaves only <pad> at no cost
    (what a finished sequence continues with)."""
    c = net.config
    open_ = torch.zeros(vocab, device=device)
    open_[[c.pad_id, c.bos_id]] = -float("inf")
    short = open_.clone()
    short[c.eos_id] = -float("inf")
    finished = torch.full((vocab,), -float("inf"), device=device)
    finished[c.pad_id] = 0.0
    return {"open": open_, "short": short, "finished": finished}


@torch.no_grad()
def generate(
    net: MaMMUT,
    image_tokens: torch.Tensor,
    *,
    max_len: int = 24,
    min_len: int = 2,
    beam_width: int = 1,
    no_repeat_ngram: int = 3,
    use_cache: bool = True,
    length_penalty: float = 1.0,
) -> torch.Tensor:
    """Pooled image tokens (b q d) -> generated ids (b n) starting with <bos>, padded after <eos>.

    beam_width 1 is greedy decoding. Beams are ranked by total log-probability / length ** length_penalty.
    <eos> is only allowed once a sequence holds min_len tokens (<bos> included), so captions are never empty.
    Both paths compute the logits of the last position only; use_cache=False reruns the whole prefix each step.
    """
    c = net.config
    b, device = image_tokens.shape[0], image_tokens.device
    w = beam_width
    if w > 1:
        image_tokens = image_tokens.repeat_interleave(w, dim=0)  # (b*w q d)
    cross_kv = net.cross_attention_kv(image_tokens)
    vocab = net.token_emb.weight.shape[0]
    penalties = token_penalties(net, vocab, device)
    sequences = torch.full((b * w, 1), c.bos_id, dtype=torch.long, device=device)
    scores = torch.zeros(b, w, device=device)
    scores[:, 1:] = -float("inf")  # all beams start identical: keep one until they diverge
    finished = torch.zeros(b * w, dtype=torch.bool, device=device)
    beam_offsets = torch.arange(b, device=device)[:, None] * w
    cache = None
    for step in range(max_len - 1):
        n = sequences.shape[1]
        if use_cache:
            inputs = sequences[:, -1:] if cache is not None else sequences
            logits, cache = net.decode(inputs, cross_kv, cache=cache, start=n - inputs.shape[1], last_only=True)
        else:
            logits, _ = net.decode(sequences, cross_kv, last_only=True)
        log_probs = logits[:, -1].float().log_softmax(dim=-1) + penalties["short" if n < min_len else "open"]
        log_probs = block_repeated_ngrams(log_probs, sequences, no_repeat_ngram)  # (b*w v)
        log_probs = torch.where(finished[:, None], penalties["finished"], log_probs)
        if w == 1:  # greedy: the best token of each sequence, nothing to reorder
            step_scores, token = log_probs.max(dim=-1)
            scores = scores + step_scores[:, None]
            sequences = torch.cat((sequences, token[:, None]), dim=-1)
            finished = finished | (token == c.eos_id)
        else:
            candidates = (scores.view(b * w, 1) + log_probs).view(b, w * vocab)
            scores, flat = candidates.topk(w, dim=-1)  # (b w)
            beam = (flat // vocab + beam_offsets).view(-1)
            token = (flat % vocab).view(-1)
            sequences = torch.cat((sequences[beam], token[:, None]), dim=-1)
            finished = finished[beam] | (token == c.eos_id)
            if cache is not None:
                cache = [(k[beam], v[beam]) for k, v in cache]
        if finished.all():
            break
    # close sequences that ran out of length with <eos>
    unfinished = ~finished
    if unfinished.any():
        sequences = torch.cat((sequences, torch.full_like(sequences[:, :1], c.pad_id)), dim=-1)
        sequences[unfinished, -1] = c.eos_id
    lengths = (sequences != c.pad_id).sum(dim=-1).float().view(b, w)
    best = (scores / lengths.clamp(min=1) ** length_penalty).argmax(dim=-1)
    return sequences.view(b, w, -1)[torch.arange(b, device=device), best]


@torch.no_grad()
def score_texts(net: MaMMUT, image_tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Length-normalised log p(text | image) for pairs: image tokens (b q d), ids (b n) -> (b)."""
    log_probs = net.caption_log_probs(text, image_tokens)  # (b n-1), zero at padding
    lengths = (text[:, 1:] != net.config.pad_id).sum(dim=-1).clamp(min=1)
    return log_probs.sum(dim=-1) / lengths
