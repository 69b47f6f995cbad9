"""The leak: the plate structure of RxRx1 that decides the score, and the code that exploits it.

Every plate of an experiment holds one group of siRNAs, each at most once; which group sits on which
plate is one of a few layouts. ``plates`` names the plate geometry and the layout table format;
``kernels`` holds the vectorised numerics (group log-probabilities, layout scores, per-plate balanced
assignment); ``assignment`` turns cached logits into calls (layout inference, masking to the plate's
group, the balanced assignment and its temperature). ``pipelines/plate_groups`` discovers the groups and
layouts from train.csv; ``pipelines/postprocess`` and ``pipelines/score`` run ``assignment`` as nodes.
"""
