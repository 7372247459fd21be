"""Decoding-time alignment: a batched KV-cached sampler, sequence-level selection (best-of-N, soft BoN,
rejection sampling, InfAlign, MAP, RPS), token-level guidance (ARGS, controlled decoding, Transfer Q*,
GenARM and MOD fusion), DeAL search and prompt-level helpers, all behind one contract:
`decode(method, model, tokenizer, prompts, reward=..., controls=...)` -> texts, per-objective scores and
the compute spent. Per-request steering for applications: `pluralign.decode.steer.steer`."""

from pluralign.decode.api import Controls, DecodeResult, decode, names
from pluralign.decode.sampler import Samples, sample

__all__ = ["Controls", "DecodeResult", "Samples", "decode", "names", "sample"]
