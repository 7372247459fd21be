"""The reward-model interface, the text encoder every model shares, and the directory format.

Every reward model is an `nn.Module` with `score(prompts, responses, user=None) -> Tensor[N, n_objectives]`
and saves to / loads from a directory:

    config.json        {"type": "bt"|"multi"|"pal"|"binary", "objectives": [...], "encoder": {...}, ...}
    head.safetensors   every parameter that is not the backbone's
    backbone/          save_pretrained model + tokenizer (only when the backbone was trained; a frozen
                       backbone is referenced by its path instead)

A model computes rewards from *features*: the pooled backbone representation of prompt+response (and, for
PAL, of the prompt alone). Frozen backbones let recipes compute the features once and train heads on them.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save
from torch import nn

from pluralign.data.prompts import check_mode, prompt_ids, transcript
from pluralign.errors import ConfigError
from pluralign.models.heads import backbone_hidden, hidden_size, pool, pooled_size
from pluralign.runs import atomic_write_bytes, atomic_write_json, write_dir

MODEL_TYPES: dict[str, type[RewardModel]] = {}
FORMAT_VERSION = 1
# what the config.json of an ensemble or an implicit reward model holds (`Ensemble.save`, `ImplicitRewardModel.save`)
SAVED_KEYS = {"ensemble": ("members",), "implicit": ("policy", "beta", "form", "max_length")}


def register(cls: type[RewardModel]) -> type[RewardModel]:
    """Class decorator: make `cls` loadable by its `model_type` name."""
    MODEL_TYPES[cls.model_type] = cls
    return cls


def _freeze_own_lm_head(backbone: nn.Module) -> None:
    """Rewards come from the final hidden states: an LM head of the backbone's own (untied from the input
    embeddings, as in Llama 3 8B or Qwen2.5 7B) is in no reward's graph. Left trainable, DDP waited for its
    gradient and every multi-process run stopped at its second step ('parameters that were not used in
    producing loss'); in one process AdamW only decayed it."""
    head, embed = backbone.get_output_embeddings(), backbone.get_input_embeddings()
    if head is not None and embed is not None and head.weight is not embed.weight:
        head.requires_grad_(False)


class TextEncoder(nn.Module):
    """A transformers backbone + tokenizer → one vector per text (pooled final hidden state).

    kind='causal': prompt and response are joined by `pluralign.data.tokenize.encode_pair` with this
    encoder's own tokenizer and `chat_template` mode (`pluralign.data.prompts`: a reward model trained on
    chat data scores chat data through its own template) and the last non-pad token is read; a pair over
    `max_length` loses its prompt's start first (`encode_scored_pair`).
    kind='encoder' (BERT-like, e.g. all-MiniLM-L6-v2): the tokenizer's own text-pair encoding of the
    texts (message lists as a `transcript`) and mean pooling.
    """

    def __init__(self, backbone: nn.Module, tokenizer: Any, *, kind: str = "causal", pooling: str | None = None,
                 max_length: int = 256, source: str | None = None, trainable: bool = True,
                 chat_template: str = "auto", packing: bool = False):
        super().__init__()
        self.backbone, self.tokenizer, self.kind = backbone, tokenizer, kind
        self.pooling = pooling or ("mean" if kind == "encoder" else "last")
        self.max_length, self.source, self.trainable = max_length, source, trainable
        self.chat_template = check_mode(chat_template)
        # packing (causal only): a batch is one row of sequences laid end to end (no padding); the caller
        # checks the backbone keeps them apart (`pluralign.models.logprobs.prepare_packing`).
        self.packing = packing and kind == "causal"
        if trainable:  # LoRA: only the adapters train (peft already froze the rest)
            if not hasattr(backbone, "peft_config"):
                self.backbone.requires_grad_(True)
            if kind == "causal":
                _freeze_own_lm_head(backbone)
        else:
            self.backbone.requires_grad_(False)

    @property
    def dim(self) -> int:
        return pooled_size(hidden_size(self.backbone), self.pooling)

    def config(self) -> dict:
        # the backbone's dtype: a frozen one loads again from its source, which may be saved in another
        # (features of float32 weights where the head was fitted on bf16 ones scored otherwise)
        dtype = str(next(self.backbone.parameters()).dtype).removeprefix("torch.")
        return {"kind": self.kind, "pooling": self.pooling, "max_length": self.max_length, "dtype": dtype,
                "trainable": self.trainable, "source": stored_source(self.source), "chat_template": self.chat_template}

    def tokenize(self, prompts: Sequence[Any], responses: Sequence[Any] | None = None) -> dict[str, torch.Tensor]:
        """Right-padded batch for prompt+response texts (or prompts alone when `responses` is None)."""
        if self.kind == "encoder":
            enc = self.tokenizer(list(map(transcript, prompts)),
                                 None if responses is None else list(map(transcript, responses)),
                                 truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        from pluralign.data.collate import pad_rows
        from pluralign.data.tokenize import Encoded, pad_token_id

        if responses is None:  # the prompt alone, as generation would see it (chat template applied)
            rows = []
            for p in prompts:
                ids = prompt_ids(self.tokenizer, p, self.chat_template)[-self.max_length:]
                rows.append(Encoded(ids, [0] * len(ids)))
        else:
            rows = [encode_scored_pair(self.tokenizer, p, r, self.max_length, self.chat_template)
                    for p, r in zip(prompts, responses, strict=True)]
            warn_if_cut(rows, self.max_length)
        if self.packing:
            from pluralign.data.collate import pack_rows

            packed = pack_rows(rows)
            return {k: packed[k] for k in ("input_ids", "position_ids", "seq_lengths")}
        batch = pad_rows(rows, pad_token_id(self.tokenizer))
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, seq_lengths: torch.Tensor | None = None,
                **_: Any) -> torch.Tensor:
        """Features [N, dim] in float32, whatever the backbone's dtype: the heads are float32 (a bf16
        backbone's features stopped the first step with 'mat1 and mat2 must have the same dtype')."""
        return self._pooled(input_ids, attention_mask, position_ids, seq_lengths).float()

    def _pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                position_ids: torch.Tensor | None, seq_lengths: torch.Tensor | None) -> torch.Tensor:
        if seq_lengths is None:
            return pool(backbone_hidden(self.backbone, input_ids, attention_mask), attention_mask, self.pooling)
        from pluralign.models.logprobs import final_hidden_states

        hidden = final_hidden_states(self.backbone, input_ids, None, position_ids)[0]  # [total, H]
        last = hidden[seq_lengths.cumsum(0) - 1]
        if self.pooling == "last":
            return last
        segment = torch.repeat_interleave(torch.arange(len(seq_lengths), device=hidden.device), seq_lengths)
        sums = hidden.new_zeros(len(seq_lengths), hidden.shape[-1]).index_add(0, segment, hidden)
        mean = sums / seq_lengths[:, None].to(hidden.dtype)
        return torch.cat([last, mean], dim=-1) if self.pooling == "last_mean" else mean

    def embed(self, prompts: Sequence[Any], responses: Sequence[Any] | None = None, batch_size: int = 64) -> torch.Tensor:
        """Features [N, H] computed in chunks, on the backbone's device."""
        device = next(self.backbone.parameters()).device
        out = []
        for i in range(0, len(prompts), batch_size):
            batch = self.tokenize(prompts[i:i + batch_size], None if responses is None else responses[i:i + batch_size])
            out.append(self(**{k: v.to(device) for k, v in batch.items()}))
        return torch.cat(out) if out else torch.zeros(0, self.dim, device=device)


def stored_source(source: str | None) -> str | None:
    """A model's source as a saved config refers to it: a local directory absolute, so the saved model
    loads from any working directory (relative, it named another directory or none); a hub id as is."""
    return str(Path(source).resolve()) if source and Path(source).exists() else source


def encode_scored_pair(tokenizer: Any, prompt: Any, response: Any, max_length: int, chat_template: str = "auto") -> Any:
    """prompt + response (`encode_pair`) in at most `max_length` tokens, the response kept whole where it fits
    (else its start). `encode_pair`'s default (cut the completion's end) drops the end a reward is read at, so
    responses that differ only there scored alike, and a prompt over `max_length` stopped training and
    scoring. Used by every reward model that reads text (`TextEncoder`, `ImplicitRewardModel`)."""
    from pluralign.data.tokenize import encode_pair

    row = encode_pair(tokenizer, prompt, response, sys.maxsize, chat_template=chat_template)
    if len(row) <= max_length:
        return row
    n_response = sum(row.completion_mask)
    n_prompt = len(row) - n_response
    # the prompt keeps its end (the question, the turn markup); a response that cannot fit at all leaves
    # the prompt up to half the room, so the reward still sees what was asked
    keep_prompt = max_length - n_response if n_response < max_length else max(1, min(n_prompt, max_length // 2))
    return encode_pair(tokenizer, prompt, response, max_length, keep_prompt, chat_template=chat_template)


def warn_if_cut(rows: Sequence[Any], max_length: int) -> None:
    """Say so when `encode_scored_pair` cut any row."""
    if any(row.truncated for row in rows):
        warnings.warn(f"reward model: a prompt + response longer than max_length={max_length} tokens was cut: the "
                      "prompt's start first (the reward is read at the response's end), the response's end only "
                      "where the response alone is longer", stacklevel=4)


def check_pairs(prompts: Any, responses: Any) -> None:
    """A `ConfigError` naming the argument for a lone text where a list belongs (a text is a sequence too:
    `score("hi", "yo")` scored each character as a pair) or for lists of different lengths."""
    from pluralign.decode.api import check_prompts

    check_prompts(prompts)
    check_prompts(responses, "responses")
    if len(prompts) != len(responses):
        raise ConfigError(f"score: {len(prompts)} prompts but {len(responses)} responses", field="responses")


def _encoder_inputs(batch: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """The token tensors of a collated batch (padded or packed) that `TextEncoder.forward` reads."""
    keys = ("input_ids", "attention_mask", "position_ids", "seq_lengths")
    return {k: batch[prefix + k] for k in keys if prefix + k in batch}


class RewardModel(nn.Module):
    """Base class: an encoder (or none, for models trained on precomputed features) plus a head.

    Subclasses implement `rewards(features, prompt_features=None, user=None) -> [N, n_outputs]` and may
    set `needs_prompt = True` (their head also reads the prompt's own features).
    """

    model_type: ClassVar[str] = ""
    needs_prompt: ClassVar[bool] = False

    def __init__(self, encoder: TextEncoder | None, objectives: Sequence[str] = ("reward",), feature_dim: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.objectives = list(objectives)
        self.feature_dim = feature_dim or (encoder.dim if encoder is not None else None)
        if self.feature_dim is None:
            raise ConfigError("a reward model needs an encoder or a feature_dim")

    # --- what subclasses provide
    def rewards(self, features: torch.Tensor, prompt_features: torch.Tensor | None = None, user: Any = None) -> torch.Tensor:
        raise NotImplementedError

    def extra_config(self) -> dict:
        """Constructor arguments (besides encoder/objectives/feature_dim) stored in config.json."""
        return {}

    # --- scoring
    def features(self, prompts: Sequence[Any], responses: Sequence[Any] | None = None) -> torch.Tensor:
        if self.encoder is None:
            raise ConfigError(f"this {self.model_type} model has no text encoder: score features with .rewards()")
        return self.encoder.embed(prompts, responses)

    def batch_features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features of a collated batch: precomputed ('features') or computed from token ids."""
        feats = batch["features"] if "features" in batch else self.encoder(**_encoder_inputs(batch))
        prompt = None
        if self.needs_prompt:
            if "prompt_features" in batch:
                prompt = batch["prompt_features"]
            else:
                prompt = self.encoder(**_encoder_inputs(batch, "prompt_"))
        return feats, prompt

    @torch.no_grad()
    def score(self, prompts: Sequence[Any], responses: Sequence[Any], user: Any = None) -> torch.Tensor:
        """Rewards [N, n_objectives] of each (prompt, response); `user` selects a per-user model where the
        model has them (PAL) or weights the objectives (multi-objective)."""
        from pluralign.decode.sampler import eval_mode

        check_pairs(prompts, responses)
        with eval_mode(self):  # each sub-module's mode restored: a backbone held in eval stays so
            feats = self.features(prompts, responses)
            prompt = self.features(prompts) if self.needs_prompt else None
            return self.rewards(feats, prompt, user=user).float().cpu()

    # --- persistence
    def save(self, out_dir: str | Path) -> Path:
        """Write the model to `out_dir`, under a temporary name renamed into place: a save stopped half-way
        leaves the directory as it was (never a new backbone with an old head)."""
        return write_dir(out_dir, self._save_into)

    def _save_into(self, out: Path) -> None:
        enc_cfg = None
        if self.encoder is not None:
            enc_cfg = self.encoder.config()
            if self.encoder.trainable or not self.encoder.source:
                from pluralign.models.load import save_model

                save_model(self.encoder.backbone, self.encoder.tokenizer, out / "backbone")
                enc_cfg["source"] = "backbone"
        head = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if not k.startswith("encoder.")}
        atomic_write_bytes(out / "head.safetensors", save(head))
        atomic_write_json(out / "config.json", {
            "format_version": FORMAT_VERSION, "type": self.model_type, "objectives": self.objectives,
            "feature_dim": self.feature_dim, "encoder": enc_cfg, **self.extra_config()})


def _load_encoder(cfg: dict | None, model_dir: Path, device: str | None) -> TextEncoder | None:
    if cfg is None:
        return None
    from pluralign.models.load import DTYPES, load_model, load_tokenizer

    src = cfg["source"]
    path = model_dir / src if src == "backbone" else Path(src)
    kwargs = {"kind": cfg["kind"]} if cfg["kind"] == "encoder" else {}
    dtype = cfg.get("dtype", "auto")  # as trained; a dtype load_model does not offer loads as saved
    backbone = load_model(str(path), device=device, dtype=dtype if dtype in DTYPES else "auto", **kwargs)
    return TextEncoder(backbone, load_tokenizer(str(path)), kind=cfg["kind"], pooling=cfg["pooling"],
                       max_length=cfg["max_length"], source=None if src == "backbone" else src,
                       trainable=cfg["trainable"], chat_template=cfg.get("chat_template", "auto"))


def read_reward_config(model_dir: str | Path) -> tuple[Path, dict]:
    """(the directory holding a saved reward model, its config.json), checked as far as it can be without loading
    weights: a server or eval given a policy's directory or an empty one as a reward found out only on loading."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists() and (model_dir / "model" / "config.json").exists():
        model_dir = model_dir / "model"  # a training run directory
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        raise ConfigError(f"{model_dir}: not a reward-model directory (no config.json)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{cfg_path}: not a reward model's config (unreadable JSON: {e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{cfg_path}: not a reward model's config (expected a JSON object)")
    import pluralign.reward  # noqa: F401  (registers every model type)

    # the types loaded by their own classes read these keys (a config without one was a KeyError traceback)
    lacking = [k for k in SAVED_KEYS.get(cfg.get("type"), ()) if k not in cfg]
    if lacking:
        raise ConfigError(f"{model_dir}: an incomplete {cfg['type']} reward model (it lacks {', '.join(lacking)})")
    if "type" not in cfg:  # e.g. a policy or base model's directory
        raise ConfigError(f"{model_dir}: not a pluralign reward model: its config.json has no 'type' (a transformers "
                          "model? `pluralign train rm model=...` trains a reward model on it)")
    if not (isinstance(cfg["type"], str) and (cfg["type"] in ("ensemble", "implicit") or cfg["type"] in MODEL_TYPES)):
        raise ConfigError(f"{cfg_path}: unknown reward-model type {cfg.get('type')!r}; known: {sorted(MODEL_TYPES)}")
    return model_dir, cfg


def load_reward_model(model_dir: str | Path, *, device: str | None = None) -> Any:
    """Load any reward model saved with `RewardModel.save` (the type is read from config.json)."""
    model_dir, cfg = read_reward_config(model_dir)
    if cfg["type"] == "ensemble":
        from pluralign.reward.ensemble import Ensemble

        return Ensemble.load(model_dir, device=device)
    if cfg["type"] == "implicit":
        from pluralign.reward.implicit import ImplicitRewardModel

        return ImplicitRewardModel.load(model_dir, device=device)
    cls = MODEL_TYPES[cfg["type"]]
    lacking = [k for k in ("objectives", "feature_dim") if k not in cfg]
    lacking += [] if (model_dir / "head.safetensors").exists() else ["head.safetensors"]
    if lacking:
        raise ConfigError(f"{model_dir}: an incomplete {cfg['type']} reward model (it lacks {', '.join(lacking)})")
    extra = {k: v for k, v in cfg.items() if k not in {"format_version", "type", "objectives", "feature_dim", "encoder"}}
    model = cls(_load_encoder(cfg.get("encoder"), model_dir, device), objectives=cfg["objectives"],
                feature_dim=cfg["feature_dim"], **extra)
    state = load_file(str(model_dir / "head.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("encoder.")]
    if missing or unexpected:
        raise ConfigError(f"{model_dir}/head.safetensors does not match a {cls.model_type} model: "
                          f"missing {missing}, unexpected {unexpected}")
    if device is not None:
        model.to(device)
    return model.eval()
