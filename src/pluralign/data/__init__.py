"""Preference data: typed records, reading and writing, validation, conversion and summaries."""

from pluralign.data.convert import (
    convert,
    judged_to_binary,
    pairwise_to_binary,
    ranked_to_pairwise,
    rated_to_binary,
    rated_to_pairwise,
    rated_to_ranked,
)
from pluralign.data.io import (
    detect_kind,
    read_checked,
    read_records,
    record_from_dict,
    record_to_dict,
    to_dataset,
    write_records,
)
from pluralign.data.records import (
    KINDS,
    Binary,
    Demonstration,
    Judged,
    Pairwise,
    Ranked,
    Rated,
    Record,
    Text,
    kind_of,
)
from pluralign.data.stats import summary

__all__ = [
    "KINDS",
    "Binary",
    "Demonstration",
    "Judged",
    "Pairwise",
    "Ranked",
    "Rated",
    "Record",
    "Text",
    "convert",
    "detect_kind",
    "kind_of",
    "judged_to_binary",
    "pairwise_to_binary",
    "ranked_to_pairwise",
    "rated_to_binary",
    "rated_to_pairwise",
    "rated_to_ranked",
    "read_checked",
    "read_records",
    "record_from_dict",
    "record_to_dict",
    "summary",
    "to_dataset",
    "write_records",
]
