"""Weights from anywhere, loaded so that a mismatch can never pass silently.

``model.weights`` (the whole model) and ``model.backbone_weights`` (the feature extractor only)
accept:

- a local file in any common layout: a plain ``state_dict``; one wrapped under ``state_dict`` /
  ``model`` / ``module`` (or nested wrappers); keys prefixed by ``module.`` (DDP) or ``model.``;
  a whole pickled module (only with ``allow_pickle: true`` for that model: unpickling runs code);
  ``.safetensors``; avatarkd's own checkpoints and exports;
- ``torchvision:<EnumClass>.<NAME>`` (e.g. ``torchvision:MobileNet_V2_Weights.IMAGENET1K_V1``),
  resolved with torchvision's weights API into the standard hub cache under ``TORCH_HOME``.
  Nothing is downloaded: when the file is not in the cache, one line names the file and the
  folder to place it in.

Keys are aligned by the prefix pair (dropped from the file, added for the model) that matches the
most tensors, so a ``module.backbone.body.`` file loads into a backbone and a classifier
checkpoint's ``features.`` loads into a ``features``-based extractor. Loading then either logs one
line (``loaded N tensors; missing: <groups>; unexpected: <groups>``) or fails with one line when
the architecture does not match: a shape mismatch, a model tensor with no counterpart (a whole
model must be complete; a backbone too), a file tensor inside a module the model has but with
no counterpart there (a deeper ResNet into a shallower one), or nothing matched. Whole file
modules the model does not have (a classifier's ``fc`` under a backbone, an ``aux_classifier``) are
reported as unexpected and left unused.

One module per job: ``files`` (any file layout -> ``state_dict``), ``hub`` (torchvision enums),
``alignment`` (which file key goes where), ``fitting`` (loading into a model, or failing in one
line), ``loading`` (a config's weights into its model), ``exports`` (what an avatarkd export
recorded about input normalisation).
"""

from .alignment import align
from .exports import exported_normalization, recorded_normalization
from .files import WRAPPERS, read_state_dict, state_dict_of
from .fitting import HEAD_NAMES, LoadReport, backbone_target, load_into
from .hub import TORCHVISION_PREFIX, read_torchvision_weights, torchvision_cache_file, torchvision_weights
from .loading import load_configured_weights, load_weights, read_weights

__all__ = [
    "HEAD_NAMES",
    "LoadReport",
    "TORCHVISION_PREFIX",
    "WRAPPERS",
    "align",
    "backbone_target",
    "exported_normalization",
    "load_configured_weights",
    "load_into",
    "load_weights",
    "read_state_dict",
    "read_torchvision_weights",
    "read_weights",
    "recorded_normalization",
    "state_dict_of",
    "torchvision_cache_file",
    "torchvision_weights",
]
