"""Torch pieces shared by the training and inference pipelines: data, network, loops, checkpoints.

Imported only inside node functions, so that kedro start-up does not pay for torch and timm.
"""
