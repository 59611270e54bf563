"""The baseline a PyTorch user has today: Relevance-CAM by torch autograd in eager mode, set up once, run per batch.

tests/reference.py's `propagate` deep-copies the model, folds BatchNorm and attaches the rule hooks on every call,
which a user would do once. `PreparedReference` does that setup once, with the same functions, and its call is
what a user pays per batch: forward, relevance backward to the chosen layers, and the CAM heads.
Needs tests/ on sys.path (tests/reference.py and tests/zoo.py).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import reference  # tests/reference.py


class PreparedReference:
    def __init__(self, model: nn.Module, layers: list[str], example: torch.Tensor, composite: str = "rcam",
                 initial: str = "contrastive", tokens=None):
        """tokens: a transformer's (extra tokens, patch rows, patch columns), as in tests/reference.py."""
        self.layers, self.initial, self.tokens = list(layers), initial, tokens
        self.model = copy.deepcopy(model).float().eval()
        reference.fold_batchnorms(self.model, example.float())
        reference.attach_rules(self.model, composite)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.activations: dict[str, torch.Tensor] = {}
        for path in self.layers:  # registered after the rule hooks, so these see the hooked outputs
            self.model.get_submodule(path).register_forward_hook(
                lambda module, inputs, output, path=path: self.activations.__setitem__(path, output))

    def __call__(self, images: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Layer -> (raw map, map) for a batch, explaining each image's predicted class."""
        # The input must require grad for the rule hooks' outputs to; autograd.grad still stops at the layers.
        logits = self.model(images.detach().requires_grad_(True))
        classes = logits.argmax(1)
        seed = reference.initial_relevance(logits.detach(), classes, self.initial)
        relevance = torch.autograd.grad(logits, [self.activations[path] for path in self.layers], seed)
        size = tuple(images.shape[2:])
        maps = {path: reference.rcam_maps(reference.patch_image(self.activations[path].detach(), self.tokens),
                                          reference.patch_image(r, self.tokens), size)
                for path, r in zip(self.layers, relevance, strict=True)}
        self.activations.clear()
        return maps
