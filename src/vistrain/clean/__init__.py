"""Data cleaning: audit findings, the review page and its undo journal."""
