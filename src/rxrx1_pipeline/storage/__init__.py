"""Pixels and weights on disk, free of Kedro: the PNG trees and the decode-once image store
(``images``), and the resumable training checkpoint (``checkpoints``)."""
