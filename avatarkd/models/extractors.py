"""The modules that feature extractors are made of, kept TorchScript-able.

No ``from __future__ import annotations`` here: TorchScript reads these annotations at run time,
as it does for torchvision's ``IntermediateLayerGetter`` and ``BackboneWithFPN``, whose layouts
(key names, ``body``/``fpn``) these keep.
"""

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork


class Stages(nn.ModuleDict):
    """Runs a trunk's stages in order and returns the named ones (an ``IntermediateLayerGetter`` for nested stages).

    The trunk's top-level children are registered under their own names and never renamed, so
    the state_dict keys are the classifier's (``layer4.1.conv2.weight``, ``0.0.weight``) and forward
    hooks on any stage (``layer4``, ``trunk_output.block3``) fire. Children after the last returned
    stage are dropped: no unused parameters (DDP would complain about them). Without nested stages
    the forward is TorchScript-able, like torchvision's ``IntermediateLayerGetter``.
    """

    def __init__(self, root: nn.Module, order: list[str], return_layers: dict[str, str]) -> None:
        last = max(order.index(p) for p in return_layers)
        kept = list(order[: last + 1])
        tops = list(dict.fromkeys(p.split(".")[0] for p in kept))
        super().__init__(OrderedDict((top, root.get_submodule(top)) for top in tops))
        self.order = kept
        self.return_layers = dict(return_layers)
        self.nested = any("." in p for p in kept)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.nested:
            return self._nested_forward(x)
        out: dict[str, Tensor] = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out

    @torch.jit.unused
    def _nested_forward(self, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = OrderedDict()
        for path in self.order:
            x = self.get_submodule(path)(x)
            if path in self.return_layers:
                out[self.return_layers[path]] = x
        return out


class TimmFeatures(nn.Module):
    """A timm ``features_only`` model whose list of levels becomes a dict of named levels.

    ``body`` is timm's own module (keys as timm names them); ``names`` maps level index -> name;
    levels without a name are not returned.
    """

    def __init__(self, body: nn.Module, names: dict[int, str]) -> None:
        super().__init__()
        self.body = body
        self.names = dict(names)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = self.body(x)
        return OrderedDict((self.names[i], f) for i, f in enumerate(feats) if i in self.names)


class FeaturePyramid(nn.Module):
    """``body`` (named levels) then ``fpn``: torchvision's ``BackboneWithFPN`` layout for any extractor."""

    def __init__(self, body: nn.Module, in_channels: list[int], out_channels: int, extra_blocks: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.fpn(self.body(x))


__all__ = ["FeaturePyramid", "Stages", "TimmFeatures"]
