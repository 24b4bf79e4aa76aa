"""Offline training of the bundled default models; the entry point is ``engine.assets.train``.

Nothing here runs at serving time: these modules need torch, transformers and tokenizers, and
are imported only by the training script.
"""
