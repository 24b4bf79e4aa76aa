"""Modules a model family swaps into transformers' model (engine.families' `patch_model`
hooks), one file per family; imported only when a model of that family is built."""
