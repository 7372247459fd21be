"""Batched sampling with a KV cache for any Hugging Face causal LM.

Each prompt is prefilled once; its cache is then duplicated for the `n` samples drawn for it, so the
prompt costs one forward pass however many samples are drawn. Rows that finish (EOS, a stop string, or
the token limit) are dropped from the batch so they stop costing compute.

Log-probabilities: `token_logps` / `sum_logps` are log p_model(token | prefix) of the *model itself* —
log_softmax of the raw logits, before temperature, top-k or top-p — because KL to the base model and
importance weights need the model's probabilities, not the warped proposal's. The proposal's own
log-probs (after warping) are in `proposal_logps` (0 for greedy decoding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from pluralign.decode.kv import Compute, LMState, encode_prompts, pad_id_of
from pluralign.decode.streams import RowStreams, occurrences, row_seed
from pluralign.errors import ConfigError


@dataclass
class Samples:
    """`texts[p][i]` is sample i for prompt p. `token_ids[p][i]` are its generated ids (EOS and the
    token completing a stop string included; the text excludes them); `token_logps[p][i]` their model
    log-probs (1-D tensor); `sum_logps` [P, n] the sums; `finish[p][i]` in {"eos", "stop", "length"}."""

    texts: list[list[str]]
    token_ids: list[list[list[int]]]
    token_logps: list[list[torch.Tensor]]
    sum_logps: torch.Tensor
    proposal_logps: torch.Tensor
    finish: list[list[str]]
    prompt_ids: list[list[int]]
    compute: Compute = field(default_factory=Compute)
    # with `sample(top_logprobs=k)`: top_logprobs[p][i][t] is the k most likely (token id, model log-prob)
    # at step t of sample i of prompt p, most likely first
    top_logprobs: list[list[list[list[tuple[int, float]]]]] | None = None

    @property
    def n_forward(self) -> int:
        return self.compute.forward

    @property
    def n_tokens(self) -> int:
        return self.compute.tokens

    @property
    def n_generated(self) -> int:
        return sum(len(ids) for row in self.token_ids for ids in row)

    def flat_texts(self) -> list[str]:
        return [t for row in self.texts for t in row]


def eos_ids(tokenizer: Any, model: Any = None, eos: int | Sequence[int] | None = None) -> set[int]:
    """EOS ids: explicit `eos`, else the tokenizer's, the model's generation config's and the chat template's
    end-of-turn token (`turn_end_id`)."""
    if eos is not None:
        return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids |= {int(gen_eos)} if isinstance(gen_eos, int) else {int(e) for e in gen_eos}
    if (turn_end := turn_end_id(tokenizer)) is not None:
        ids.add(turn_end)
    return ids


_TURN_END: dict[tuple[int, str], int | None] = {}


def turn_end_id(tokenizer: Any) -> int | None:
    """The special token the chat template closes an assistant's turn with (<|im_end|>, <|eot_id|>,
    <end_of_turn>), or None. It is not always the tokenizer's EOS nor in the generation config (a ChatML
    fine-tune of a base model keeps the base's <|endoftext|>; early Llama-3 configs lacked <|eot_id|>), and a
    model that writes it has finished its answer: decoding on, it would write the user's next turn."""
    template = getattr(tokenizer, "chat_template", None)
    if not template or not isinstance(template, str):
        return None
    key = (id(tokenizer), template)
    if key not in _TURN_END:
        mark, end = "\x00pluralign-reply\x00", None
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": mark}],
                                                 tokenize=False)
            after = text.split(mark, 1)[1] if mark in text else ""
            ids = tokenizer.encode(after.lstrip(), add_special_tokens=False) if after.strip() else []
            special = set(getattr(tokenizer, "all_special_ids", ()) or ())
            end = int(ids[0]) if ids and ids[0] in special else None
        except Exception:  # a template that will not render this conversation: no end-of-turn token known
            end = None
        _TURN_END[key] = end
    return _TURN_END[key]


class Generation:
    """Generated tokens of B rows and when each finished (EOS, stop string, or length limit).

    Stop strings are checked on the decoded tail of each row (the last UTF-8 length of the longest stop + 2
    tokens), so
    a stop string spanning token boundaries is still found; the text is cut at its first occurrence.
    """

    def __init__(self, batch: int, tokenizer: Any, *, eos: set[int], stop: Sequence[str] | None,
                 max_new_tokens: int | Sequence[int]):
        self.tokenizer = tokenizer
        self.eos = eos
        self.stop = [s for s in (stop or []) if s]
        # tokens enough to hold any stop string, counted in UTF-8 bytes: a token is at least one byte of text
        # (byte-level BPE, SentencePiece byte fallback); counted in characters, a stop of rare CJK characters
        # (three byte tokens each) never fitted in the window, and the answer ran on to the limit
        self.tail = max((len(s.encode("utf-8")) for s in self.stop), default=0) + 2
        self.limit = [max_new_tokens] * batch if isinstance(max_new_tokens, int) else list(max_new_tokens)
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.logps: list[list[float]] = [[] for _ in range(batch)]
        self.proposal: list[float] = [0.0] * batch
        self.reason: list[str | None] = [None] * batch
        self.top: list[list[list[tuple[int, float]]]] = [[] for _ in range(batch)]

    def active(self) -> list[int]:
        return [i for i, r in enumerate(self.reason) if r is None]

    @property
    def done(self) -> bool:
        return all(r is not None for r in self.reason)

    def append(self, rows: Sequence[int], tokens: torch.Tensor, logps: torch.Tensor,
               proposal: torch.Tensor | None = None, top: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Append `tokens[j]` (model log-prob `logps[j]`) to row `rows[j]`; `top` = (log-probs [B, k],
        token ids [B, k]) of the step's most likely tokens, kept per row when given."""
        toks, lps = tokens.tolist(), logps.tolist()
        props = proposal.tolist() if proposal is not None else [0.0] * len(toks)
        top_lps, top_ids = (top[0].tolist(), top[1].tolist()) if top is not None else (None, None)
        for j, row in enumerate(rows):
            if self.reason[row] is not None:
                continue
            self.tokens[row].append(toks[j])
            self.logps[row].append(lps[j])
            if top_ids is not None:
                self.top[row].append(list(zip(top_ids[j], top_lps[j], strict=True)))
            self.proposal[row] += props[j]
            if toks[j] in self.eos:
                self.reason[row] = "eos"
            elif self.stop and self._hit_stop(row):
                self.reason[row] = "stop"
            elif len(self.tokens[row]) >= self.limit[row]:
                self.reason[row] = "length"

    def _hit_stop(self, row: int) -> bool:
        tail = self.tokenizer.decode(self.tokens[row][-self.tail:], skip_special_tokens=True)
        return any(s in tail for s in self.stop)

    def text(self, row: int) -> str:
        return decoded_text(self.tokenizer, self.tokens[row], self.stop)


def finish_reason(ids: Sequence[int], max_new_tokens: int, eos: set[int], tokenizer: Any = None,
                  stop: Sequence[str] | None = None) -> str:
    """OpenAI's finish reason of an answer from its generated ids: "length" when it filled the token limit
    without ending, else "stop" (an end-of-sequence token or a stop string), as the sampler decides: an
    end-of-sequence token or a stop string completed by the last token wins over the limit."""
    if len(ids) < max_new_tokens or (ids and ids[-1] in eos):
        return "stop"
    text = tokenizer.decode(list(ids), skip_special_tokens=True) if tokenizer is not None and stop else ""
    return "stop" if any(s and s in text for s in stop or ()) else "length"


def decoded_text(tokenizer: Any, ids: Sequence[int], stop: Sequence[str] | None) -> str:
    """The generated ids as text (special tokens left out), cut at the first stop string."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    cuts = [text.find(s) for s in stop or () if s and s in text]
    return text[: min(cuts)] if cuts else text


def warp_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Log-probs of the sampling distribution: temperature, then top-k, then nucleus (top-p) filtering
    (Holtzman et al. 2020). Filtered tokens get -inf; the most likely token is always kept."""
    x = logits.float() if temperature == 1.0 else logits.float() / max(temperature, 1e-8)
    if top_k and top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        drop = probs.cumsum(-1) - probs > top_p  # mass strictly before this token already exceeds top_p
        drop[..., 0] = False
        x = x.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.log_softmax(x, dim=-1)


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One index per row of `probs` [B, V] (rows sum to 1; zero-probability entries are never drawn) by its
    inverse CDF at the row's uniform `u` [B] in [0, 1): one uniform per row, so each row can take it from its
    own random stream (`RowStreams`), and cheap (torch.multinomial draws one exponential variate per entry: for
    32 rows of a 49152-token vocabulary 44 ms on one CPU core, against about 2 ms). The cumulative sums are
    taken in float64 so no entry's interval is lost to rounding."""
    cdf = probs.double().cumsum(-1)
    x = u.to(cdf.device, torch.float64)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, x, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def choose_tokens(logits: torch.Tensor, *, temperature: float, top_k: int, top_p: float,
                  uniforms: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens [B] and their proposal log-probs; temperature <= 0 means greedy (argmax, drawing
    nothing); else one draw per row at `uniforms()` [B]."""
    if temperature <= 0:
        tok = logits.argmax(-1)
        return tok, torch.zeros_like(tok, dtype=torch.float)
    lp = warp_logits(logits, temperature, top_k, top_p)
    tok = draw(lp.exp(), uniforms())
    return tok, lp.gather(-1, tok[:, None]).squeeze(-1)


def model_logps(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] per row, without writing the [B, V] log-softmax out."""
    x = logits.float()
    return x.gather(-1, tokens[:, None]).squeeze(-1) - torch.logsumexp(x, -1)


@contextmanager
def eval_mode(*models: Any):
    """Run in eval mode (no dropout) and restore every module's previous mode afterwards, sub-modules
    included (a caller may hold some in eval on purpose, e.g. frozen normalisation in a training model)."""
    modes = [(sub, sub.training) for m in models if hasattr(m, "training")
             for sub in (m.modules() if isinstance(m, torch.nn.Module) else [m])]
    for m in models:
        if hasattr(m, "training"):
            m.eval()
    try:
        yield
    finally:
        for sub, was in modes:  # parents before their children (`modules()` order), so each ends as it was
            sub.train(was)


def sample(model: Any, tokenizer: Any, prompts: Sequence[Any], *, n: int = 1, max_new_tokens: int = 48,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, stop: Sequence[str] | None = None,
           eos: int | Sequence[int] | None = None, seed: int | None | Sequence[int | None] = None, max_rows: int = 1024,
           chat_template: str | Sequence[str] = "auto", top_logprobs: int = 0,
           on_step: Callable[[Generation, int], None] | None = None, owners: Sequence[Any] | None = None) -> Samples:
    """Draw `n` samples per prompt (temperature <= 0: greedy). Deterministic for a given `seed` (one for all
    prompts or one per prompt; None: fresh draws): each sample draws from its own stream, seeded by the seed,
    its prompt's token ids and its index (`row_seed`; a prompt repeated in the list takes the next indices,
    `occurrences`), so a prompt's samples are the same whatever other prompts, order or `max_rows` they are
    drawn with, and requests with different seeds can share a batch.

    Prompts (strings, chat messages, or token ids) are rendered by `pluralign.data.prompts.encode_prompts`
    (`chat_template`: auto | always | never, one mode or one per prompt) and left-padded with a matching attention mask and position ids;
    each prompt is prefilled once and its KV cache expanded to its n samples. At most `max_rows`
    sequences are decoded at once (prompts are processed in chunks).

    `on_step(gen, first)`, if given, runs after every decoding step of a chunk whose first prompt is
    `first` (row r of `gen` is sample r % n of prompt first + r // n). It may read the tokens so far
    (streaming) and end rows early by setting `gen.reason[r]` (e.g. "cancelled" when a client has gone),
    which drops them from the batch at once.

    `owners` (one per prompt: which request it is of; a server's call decodes several) keeps the repeats of a
    prompt to its own request: a prompt takes the next indices only after an earlier one of the same owner, so
    each request draws what it draws alone, and two requests with one seed and prompt get the same answers.

    `top_logprobs=k` also records, at every step of every sample, the k most likely tokens and their model
    log-probs (`Samples.top_logprobs`; what an OpenAI-style ``top_logprobs`` reply reports).
    """
    if n < 1 or max_new_tokens < 1:
        raise ConfigError(f"sample: n and max_new_tokens must be >= 1 (got n={n}, max_new_tokens={max_new_tokens})")
    if not 0.0 < top_p <= 1.0:
        raise ConfigError(f"sample: top_p must be in (0, 1] (got {top_p})")
    prompt_ids = encode_prompts(tokenizer, list(prompts), chat_template)
    eos_set = eos_ids(tokenizer, model, eos)
    seeds = list(seed) if isinstance(seed, Sequence) else [seed] * len(prompt_ids)
    if len(seeds) != len(prompt_ids):
        raise ConfigError(f"sample: {len(seeds)} seeds for {len(prompt_ids)} prompts")
    owned = [None] * len(prompt_ids) if owners is None else list(owners)
    if len(owned) != len(prompt_ids):
        raise ConfigError(f"sample: {len(owned)} owners for {len(prompt_ids)} prompts")
    occ = occurrences([(o, s, tuple(ids)) for o, s, ids in zip(owned, seeds, prompt_ids, strict=True)])
    compute = Compute()
    per_chunk = max(1, max_rows // n)
    gens: list[Generation] = []
    with eval_mode(model):
        for start in range(0, len(prompt_ids), per_chunk):
            chunk = prompt_ids[start:start + per_chunk]
            step = None if on_step is None else (lambda gen, first=start: on_step(gen, first))
            streams = RowStreams([None if seeds[p] is None else row_seed(seeds[p], prompt_ids[p], occ[p] * n + i)
                                  for p in range(start, start + len(chunk)) for i in range(n)])
            gens.append(_sample_chunk(model, tokenizer, chunk, n, max_new_tokens, temperature, top_k, top_p,
                                      stop, eos_set, streams, compute, step, top_logprobs))
    return _collect(gens, n, prompt_ids, compute, top_logprobs > 0)


def _sample_chunk(model, tokenizer, prompt_ids, n, max_new_tokens, temperature, top_k, top_p, stop, eos_set,
                  streams, compute, on_step=None, top_logprobs=0) -> Generation:
    pad = pad_id_of(tokenizer, model)
    state = LMState.from_ids(model, prompt_ids, pad, compute=compute)
    state.reserve(max_new_tokens)
    state.select(torch.arange(len(prompt_ids)).repeat_interleave(n))
    gen = Generation(len(prompt_ids) * n, tokenizer, eos=eos_set, stop=stop, max_new_tokens=max_new_tokens)
    rows = list(range(len(prompt_ids) * n))  # state row j holds generation row rows[j]
    plain = temperature == 1.0 and not top_k and top_p >= 1.0  # the proposal is the model's own distribution
    while True:
        tok, prop = choose_tokens(state.logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                  uniforms=lambda rows=rows: streams.uniforms(rows, state.logits.device))
        logp = prop if plain else model_logps(state.logits, tok)
        top = (torch.log_softmax(state.logits.float(), -1).topk(min(top_logprobs, state.logits.shape[-1]), -1)
               if top_logprobs else None)
        gen.append(rows, tok, logp, prop, top)
        if on_step is not None:
            on_step(gen)
        keep = [j for j, r in enumerate(rows) if gen.reason[r] is None]
        if not keep:
            return gen
        if len(keep) < len(rows):
            state.select(keep)
            tok = tok[keep]
            rows = [rows[j] for j in keep]
        state.advance(tok)


def _collect(gens: list[Generation], n: int, prompt_ids: list[list[int]], compute: Compute,
             with_top: bool = False) -> Samples:
    texts, ids, logps, finish, sums, props, tops = [], [], [], [], [], [], []
    for gen in gens:
        for p in range(len(gen.tokens) // n):
            rows = range(p * n, (p + 1) * n)
            texts.append([gen.text(r) for r in rows])
            ids.append([gen.tokens[r] for r in rows])
            logps.append([torch.tensor(gen.logps[r], dtype=torch.float) for r in rows])
            finish.append([gen.reason[r] or "length" for r in rows])
            sums.append([sum(gen.logps[r]) for r in rows])
            props.append([gen.proposal[r] for r in rows])
            tops.append([gen.top[r] for r in rows])
    return Samples(texts=texts, token_ids=ids, token_logps=logps, sum_logps=torch.tensor(sums, dtype=torch.float),
                   proposal_logps=torch.tensor(props, dtype=torch.float), finish=finish, prompt_ids=prompt_ids,
                   compute=compute, top_logprobs=tops if with_top else None)
