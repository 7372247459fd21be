"""Models: loading and saving (`load`), chunked completion log-probs (`logprobs`), tiny local models (`tiny`)."""

from pluralign.models.load import load_model, load_tokenizer, save_model
from pluralign.models.logprobs import PairwiseLogps, pairwise_logps, sequence_logps, token_logps
from pluralign.models.lora import LoraSpec, add_lora, is_peft_model

__all__ = [
    "LoraSpec", "PairwiseLogps", "add_lora", "is_peft_model", "load_model", "load_tokenizer",
    "pairwise_logps", "save_model", "sequence_logps", "token_logps",
]
