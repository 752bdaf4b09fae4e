"""Caption decoding (batched greedy and beam search) with a key/value cache, and query likelihood.

The cross-attention keys/values are computed once per image; the self-attention keys/values of earlier
tokens are cached, so each step runs the decoder on one new token per sequence.
"""

from __future__ import annotations

import torch

from .model import MaMMUT


def block_repeated_ngrams(log_probs: torch.Tensor, sequences: torch.Tensor, ngram: int) -> torch.Tensor:
    """Forbid (set to -inf) every next token that would repeat an n-gram already in its sequence.

    log_probs (b v), sequences (b n): the windows of the last n-1 tokens are matched against all earlier ones.
    """
    if ngram <= 0 or sequences.shape[1] < ngram:
        return log_probs
    windows = sequences.unfold(1, ngram, 1)  # (b w ngram)
    last = sequences[:, sequences.shape[1] - ngram + 1 :]  # (b ngram-1)
    repeats = (windows[:, :, :-1] == last[:, None, :]).all(dim=-1)  # (b w)
    penalty = torch.zeros_like(windows[:, :, -1], dtype=log_probs.dtype).masked_fill(repeats, -float("inf"))
    return log_probs.scatter_add(1, windows[:, :, -1], penalty)


def next_token_log_probs(
    logits: torch.Tensor, sequences: torch.Tensor, net: MaMMUT, no_repeat_ngram: int
) -> torch.Tensor:
    """logits (b vocab) of the next token -> log-probabilities with the guards applied: never <pad> or <bos>,
    and no n-gram repeated (a guard against endless repetition)."""
    log_probs = logits.float().log_softmax(dim=-1)
    log_probs[:, [net.config.pad_id, net.config.bos_id]] = -float("inf")
    return block_repeated_ngrams(log_probs, sequences, no_repeat_ngram)


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
    """
    c = net.config
    b, device = image_tokens.shape[0], image_tokens.device
    w = beam_width
    image_tokens = image_tokens.repeat_interleave(w, dim=0)  # (b*w q d)
    cross_kv = net.cross_attention_kv(image_tokens)
    sequences = torch.full((b * w, 1), c.bos_id, dtype=torch.long, device=device)
    scores = torch.zeros(b, w, device=device)
    scores[:, 1:] = -float("inf")  # all beams start identical: keep one until they diverge
    finished = torch.zeros(b * w, dtype=torch.bool, device=device)
    cache = None
    for step in range(max_len - 1):
        if use_cache:
            inputs = sequences[:, -1:] if cache is not None else sequences
            logits, cache = net.decode(
                inputs, cross_kv, cache=cache, start=sequences.shape[1] - inputs.shape[1], last_only=True
            )
        else:
            logits, _ = net.decode(sequences, cross_kv)
        log_probs = next_token_log_probs(logits[:, -1], sequences, net, no_repeat_ngram)  # (b*w v)
        if sequences.shape[1] < min_len:
            log_probs[:, c.eos_id] = -float("inf")
        # a finished sequence can only continue with padding, at no cost
        log_probs[finished] = -float("inf")
        log_probs[finished, c.pad_id] = 0.0
        vocab = log_probs.shape[-1]
        candidates = (scores.view(b * w, 1) + log_probs).view(b, w * vocab)
        scores, flat = candidates.topk(w, dim=-1)  # (b w)
        beam = flat // vocab + torch.arange(b, device=device)[:, None] * w
        beam, token = beam.view(-1), (flat % vocab).view(-1)
        sequences = torch.cat((sequences[beam], token[:, None]), dim=-1)
        finished = finished[beam] | (token == c.eos_id)
        if cache is not None and w > 1:  # greedy never reorders
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
