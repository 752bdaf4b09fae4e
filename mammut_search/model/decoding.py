"""Caption decoding (batched greedy and beam search) with a key/value cache, and query likelihood.

The cross-attention keys/values are computed once per image; the self-attention keys/values of earlier
tokens are cached, so each step runs the decoder on one new token per sequence.
"""

from __future__ import annotations

import torch

from mammut_search.model.mammut import MaMMUT


# On a GPU, asking whether every sequence has finished waits for the device; it is asked every this many steps
# (finished sequences only add <pad>, trimmed at the end, so the result is the same).
SYNC_EVERY_CUDA = 8


def block_repeated_ngrams(log_probs: torch.Tensor, sequences: torch.Tensor, ngram: int) -> torch.Tensor:
    """Forbid (set to -inf, in place) every next token that would repeat an n-gram already in its sequence.

    log_probs (b v), sequences (b n): the last n-1 tokens are matched against every earlier (n-1)-gram, each
    read as one integer (base v), so the match is one comparison rather than n-1 and a reduction.
    """
    if ngram <= 0 or sequences.shape[1] < ngram:
        return log_probs
    vocab, prefix = log_probs.shape[-1], ngram - 1
    if prefix == 0 or vocab ** prefix >= 2 ** 62:  # unigrams, or codes that would overflow: compare windows
        windows = sequences.unfold(1, ngram, 1)  # (b w ngram)
        last = sequences[:, sequences.shape[1] - prefix:]  # (b ngram-1)
        repeats = (windows[:, :, :-1] == last[:, None, :]).all(dim=-1)  # (b w)
        followers = windows[:, :, -1]
    else:
        n = sequences.shape[1]
        codes = sequences[:, : n - prefix + 1]
        for k in range(1, prefix):
            codes = codes * vocab + sequences[:, k : n - prefix + 1 + k]  # (b n-prefix+1): every (n-1)-gram
        repeats = codes[:, :-1] == codes[:, -1:]  # (b w): earlier (n-1)-grams equal to the last one
        followers = sequences[:, prefix:]  # the token that followed each
    penalty = torch.where(repeats, -float("inf"), 0.0).to(log_probs.dtype)
    return log_probs.scatter_add_(1, followers, penalty)  # in place: touches (b w) entries, not (b v)


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
def generate(net: MaMMUT, image_tokens: torch.Tensor, *, max_len: int = 24, min_len: int = 2, beam_width: int = 1,
             no_repeat_ngram: int = 3, use_cache: bool = True, length_penalty: float = 1.0,
             sync_every: int | None = None) -> torch.Tensor:
    """Pooled image tokens (b q d) -> generated ids (b n) starting with <bos>, padded after <eos>.

    beam_width 1 is greedy decoding. Beams are ranked by total log-probability / length ** length_penalty.
    <eos> is only allowed once a sequence holds min_len tokens (<bos> included), so captions are never empty.
    Both paths compute the logits of the last position only; use_cache=False reruns the whole prefix each step.
    The ids are written into one buffer allocated up front. The loop asks whether every sequence has finished
    every `sync_every` steps (default: 1 on a CPU, SYNC_EVERY_CUDA on a GPU, so that the host does not wait for
    the device at every token); the result does not depend on it.
    """
    if sync_every is None:
        sync_every = SYNC_EVERY_CUDA if image_tokens.device.type == "cuda" else 1
    if beam_width == 1 and use_cache:
        return greedy(net, image_tokens, max_len=max_len, min_len=min_len, no_repeat_ngram=no_repeat_ngram,
                      sync_every=sync_every)
    c, w = net.config, beam_width
    b, device = image_tokens.shape[0], image_tokens.device
    cross_kv = net.cross_attention_kv(image_tokens.repeat_interleave(w, dim=0))  # beams side by side: (b*w q d)
    vocab = net.token_emb.weight.shape[0]
    penalties = token_penalties(net, vocab, device)
    # <bos>, up to max_len - 1 tokens, and the <eos> closing sequences that run out of length
    sequences = torch.full((b * w, max_len + 1), c.pad_id, dtype=torch.long, device=device)
    sequences[:, 0] = c.bos_id
    scores = torch.zeros(b, w, device=device)
    scores[:, 1:] = -float("inf")  # all beams start identical: keep one until they diverge
    finished = torch.zeros(b * w, dtype=torch.bool, device=device)
    beam_offsets = torch.arange(b, device=device)[:, None] * w
    cache = None
    n = 1  # tokens written so far
    for step in range(max_len - 1):
        written = sequences[:, :n]
        if use_cache:
            inputs = written[:, -1:] if cache is not None else written
            logits, cache = net.decode(inputs, cross_kv, cache=cache, start=n - inputs.shape[1], last_only=True)
        else:
            logits, _ = net.decode(written, cross_kv, last_only=True)
        log_probs = _guarded_log_probs(logits[:, -1], written, penalties["short" if n < min_len else "open"],
                                       no_repeat_ngram, normalise=w > 1)
        log_probs = torch.where(finished[:, None], penalties["finished"], log_probs)  # (b*w v)
        if w == 1:  # greedy: the best token of each sequence, nothing to reorder
            token = log_probs.argmax(dim=-1)
        else:
            candidates = (scores.view(b * w, 1) + log_probs).view(b, w * vocab)
            scores, flat = candidates.topk(w, dim=-1)  # (b w)
            beam = (flat // vocab + beam_offsets).view(-1)
            token = (flat % vocab).view(-1)
            sequences, finished = sequences[beam], finished[beam]
            if cache is not None:
                cache = [(k[beam], v[beam]) for k, v in cache]
        sequences[:, n] = token
        n += 1
        finished |= token == c.eos_id
        if (step + 1) % sync_every == 0 and finished.all():
            break
    sequences = _closed(sequences, finished, n, c.pad_id, c.eos_id, trim=sync_every > 1)
    return sequences if w == 1 else _best_beams(sequences, scores, c.pad_id, length_penalty)


def _best_beams(sequences: torch.Tensor, scores: torch.Tensor, pad_id: int, length_penalty: float) -> torch.Tensor:
    """Each image's best beam: sequences (b*w n) and total scores (b w) -> (b n), ranked by score / length **
    length_penalty."""
    b, w = scores.shape
    lengths = (sequences != pad_id).sum(dim=-1).float().view(b, w)
    best = (scores / lengths.clamp(min=1) ** length_penalty).argmax(dim=-1)
    return sequences.view(b, w, -1)[torch.arange(b, device=sequences.device), best]


def _guarded_log_probs(logits: torch.Tensor, written: torch.Tensor, guard: torch.Tensor, no_repeat_ngram: int,
                       *, normalise: bool) -> torch.Tensor:
    """Last-position logits (b v) -> scores with the length guard and repeated n-grams blocked. Greedy reads only
    the best token, and log_softmax keeps the order of the logits, so it is skipped unless `normalise`."""
    log_probs = logits.float().log_softmax(dim=-1) if normalise else logits.float()
    return block_repeated_ngrams(log_probs + guard, written, no_repeat_ngram)


def _closed(sequences: torch.Tensor, finished: torch.Tensor, n: int, pad_id: int, eos_id: int, *,
            trim: bool) -> torch.Tensor:
    """The first `n` columns of `sequences` (b m), sequences that ran out of length closed with <eos>. `trim`:
    steps run after every sequence had finished wrote only <pad>, so they are dropped first."""
    if trim:
        n = int((sequences != pad_id).any(dim=0).nonzero().max()) + 1
    unfinished = ~finished
    if unfinished.any():
        sequences[unfinished, n] = eos_id
        n += 1
    return sequences[:, :n]


@torch.no_grad()
def greedy(net: MaMMUT, image_tokens: torch.Tensor, *, max_len: int, min_len: int, no_repeat_ngram: int,
           sync_every: int) -> torch.Tensor:
    """Greedy decoding with the key/value cache, as `generate` with beam_width 1 defines it: pooled image
    tokens (b q d) -> ids (b n). Every `sync_every` steps, the sequences that wrote <eos> leave the batch (with
    their caches), so later steps run the decoder and the vocabulary projection on unfinished ones only; the
    guards touch the few forbidden entries of each row rather than adding a (b v) table."""
    c = net.config
    b, device = image_tokens.shape[0], image_tokens.device
    cross_kv = net.cross_attention_kv(image_tokens)
    sequences = torch.full((b, max_len + 1), c.pad_id, dtype=torch.long, device=device)
    sequences[:, 0] = c.bos_id
    rows = torch.arange(b, device=device)  # the rows of `sequences` still in the batch
    finished = torch.zeros(b, dtype=torch.bool, device=device)  # of those rows
    never, before_min = [c.pad_id, c.bos_id], [c.pad_id, c.bos_id, c.eos_id]
    cache, n = None, 1
    for step in range(max_len - 1):
        written = sequences[rows, :n]  # (a n)
        inputs = written[:, -1:] if cache is not None else written
        logits, cache = net.decode(inputs, cross_kv, cache=cache, start=n - inputs.shape[1], last_only=True)
        scores = logits[:, -1].float()  # (a v): argmax of the logits = argmax of the log-probabilities
        scores[:, before_min if n < min_len else never] = -float("inf")
        token = block_repeated_ngrams(scores, written, no_repeat_ngram).argmax(dim=-1)
        token = torch.where(finished, c.pad_id, token)  # a finished sequence only adds <pad>
        sequences[rows, n] = token
        n += 1
        finished |= token == c.eos_id
        if (step + 1) % sync_every == 0 and finished.any():
            if finished.all():
                break
            keep = ~finished
            rows, finished = rows[keep], finished[keep]
            cache = [(k[keep], v[keep]) for k, v in cache]
            cross_kv = [(kv[0][keep], kv[1][keep]) if kv is not None else None for kv in cross_kv]
    if sync_every > 1:  # steps run after every sequence had finished wrote only <pad>: drop them
        n = int((sequences != c.pad_id).any(dim=0).nonzero().max()) + 1
    open_rows = rows[~finished]
    if len(open_rows):  # close sequences that ran out of length with <eos>
        sequences[open_rows, n] = c.eos_id
        n += 1
    return sequences[:, :n]


@torch.no_grad()
def score_texts(net: MaMMUT, image_tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Length-normalised log p(text | image) for pairs: image tokens (b q d), ids (b n) -> (b)."""
    log_probs = net.caption_log_probs(text, image_tokens)  # (b n-1), zero at padding
    lengths = (text[:, 1:] != net.config.pad_id).sum(dim=-1).clamp(min=1)
    return log_probs.sum(dim=-1) / lengths
