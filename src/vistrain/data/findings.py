"""Display names of data findings, shared by the cleaning page and the model card."""

from __future__ import annotations

# Each finding of these kinds is a group of files, not one file: "3 near duplicate" read as 3 files.
NAMES = {
    "conflict": ("conflict", "conflicts"),
    "leak": ("leak across splits", "leaks across splits"),
    "exact_duplicate": ("group of exact copies", "groups of exact copies"),
    "near_duplicate": ("group of near duplicates", "groups of near duplicates"),
    "unreadable": ("unreadable file", "unreadable files"),
    "shortcut": ("shortcut", "shortcuts"),
    "label_error": ("likely label error", "likely label errors"),
    "outlier": ("outlier", "outliers"),
}
