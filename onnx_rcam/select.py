"""Stage 3: resolve layer selectors to activation tensors, and find the sub-graph the sweep must walk."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .canonicalize import Canonical, constant_value
from .propagators.attention import is_attention_weights
from .errors import LayerSelectionError

@dataclass(frozen=True)
class Candidate:
    index: int
    tensor: str
    op: str
    shape: tuple
    downsampling: float
    scope: str  # torch module path the exporter recorded, or ""
    tokens: "TokenGrid | None" = None  # for a transformer's [N, T, D] tokens: where the patches lie


@dataclass(frozen=True)
class TokenGrid:
    """Where a layer's image grid lies when its activation is not [N, C, h, w] (docs/design.md section 6, token layers):
    in [N, T, D] tokens, the last height * width are the patches, row by row, after `prefix` class, distillation or
    register tokens; with channels_last, the activation is [N, h, w, D] (Swin, ConvNeXt's blocks in timm)."""
    prefix: int
    height: int
    width: int
    channels_last: bool = False

    def describe(self) -> str:
        if self.channels_last:
            return f"{self.height}x{self.width} channels-last"
        return f"{self.height}x{self.width} patches" + (f" +{self.prefix}" if self.prefix else "")


@dataclass(frozen=True)
class Target:
    key: str     # the selector as given (docs/design.md section 2), `auto` included
    tensor: str
    tokens: TokenGrid | None = None


MAX_EXTRA_TOKENS = 8  # class, distillation and register tokens before the patches


def candidates(canonical: Canonical) -> list[Candidate]:
    """The layers that can be explained, in topological order, all produced by a node on a path from the image to
    the logits: float 4-D activations laid out [N, C, h, w] on the image's grid, downsampled (more than 1 x 1); the
    same laid out [N, h, w, C]; and a transformer's [N, T, D] tokens whose last h x w are the patches of the
    patch-embedding Conv, or of a grid it downsampled by merging patches (Swin)."""
    on_path = _descendants([canonical.image]) & _ancestors(canonical.logits)
    channel_last = _channel_last(canonical)
    on_grid = _grid_tensors(canonical, channel_last)
    patches = _patch_grid(canonical)
    probed = canonical.probed
    height = canonical.image_size[0]
    found = []
    for node in canonical.graph.nodes:
        for tensor in node.outputs:
            if tensor.name not in on_path or tensor.shape is None or not _is_float(tensor):
                continue
            if not _per_image(tensor, probed):
                continue
            shape = tuple(tensor.shape)
            tokens = _token_grid(node, tensor.name, shape, patches, on_grid, channel_last, canonical.image_size)
            if tokens is not None:
                found.append(Candidate(len(found), tensor.name, node.op, shape,
                                       height / tokens.height, canonical.scopes.get(tensor.name, ""), tokens))
            elif (tensor.name in on_grid and tensor.name not in channel_last and len(shape) == 4
                    and _spatial_size(shape) > 1 and _on_image_grid(shape, canonical.image_size)):
                h = shape[2]
                factor = height / h if isinstance(h, int) and h else float("nan")
                found.append(Candidate(len(found), tensor.name, node.op, shape, factor,
                                       canonical.scopes.get(tensor.name, "")))
    return found


def _per_image(tensor: gs.Tensor, probed: dict[str, tuple] | None) -> bool:
    """Whether axis 0 is the batch, as far as the shapes at a fixed batch tell (canonicalize's probe): not for a
    Swin's attention windows [N * windows, ...] or heads."""
    found = probed.get(tensor.name) if probed is not None else None
    return found is None or len(found) < 2 or found[0] is not None


def _auto(canonical: Canonical, options: list[Candidate]) -> Candidate:
    """The last activation with a grid, the one global pooling or flattening consumes (of known size where any is).
    In a transformer whose class score reads the class token after the last block, the patches at the last token
    layer get no relevance and no gradient: there it is the last token layer of the model's width that feeds the
    last attention (the last block's normalised input, as pytorch-grad-cam advises for ViTs)."""
    known = [c for c in options if all(isinstance(d, int) for d in c.shape[2:])] or options
    if not canonical.classifier:
        return _last_dominating(canonical, known)
    if known[-1].tokens is None or known[-1].tokens.prefix == 0:  # no class token: the head pools the patches
        return known[-1]
    attention = [n for n in canonical.graph.nodes if n.op in ("MatMul", "Einsum")
                 and any(map(is_attention_weights, n.inputs))]
    if not attention:
        return known[-1]
    feeding = _ancestors(attention[-1].outputs[0])
    width = _patch_grid(canonical)[2]  # the patch embedding's channels: the residual stream's width
    chosen = [c for c in known if c.tokens is not None and c.tensor in feeding and c.shape[2] == width]
    return (chosen or known)[-1]


LEARNED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum")


def _last_dominating(canonical: Canonical, options: list[Candidate]) -> Candidate:
    """For a detector's or segmenter's scores: the deepest layer that every path from the image to the scores
    passes (a detector's last feature map before its scales branch, a segmenter's last features before its
    classifier), with a learned layer between it and the scores (not the class-score map that is only resized);
    the first layer where none is."""
    tensors = canonical.graph.tensors()
    for option in reversed(options):
        reach = _descendants([tensors[option.tensor]]) & _ancestors(canonical.logits)
        learned_after = any(n.op in LEARNED_OPS and any(out.name in reach for out in n.outputs)  # on the way to the
                            for name in reach for n in tensors[name].outputs)               # scores, not aside
        if learned_after and canonical.logits.name not in _descendants([canonical.image], avoid=option.tensor):
            return option
    return options[0]


def _grid_tensors(canonical: Canonical, channel_last: set[str]) -> set[str]:
    """Names of the tensors whose last two axes are the image's grid (downsampled): from the NCHW image (or the
    Transpose of an NHWC one) through every op but those that move axes, which keep the grid only where they keep
    the last two axes (a channel shuffle does; flattening to tokens or splitting attention heads does not)."""
    grid = {canonical.image.name} if canonical.layout == "NCHW" else set()
    for node in canonical.graph.nodes:
        sources = [t for t in node.inputs if t.name in grid]
        if node.op == "Transpose" and not sources and node.inputs and node.inputs[0].name in channel_last:
            if list(node.attrs.get("perm", [])) == [0, 3, 1, 2]:
                grid.update(t.name for t in node.outputs)
            continue
        if not sources:
            continue
        for out in node.outputs:
            if out.shape is None or len(out.shape) < 4:
                continue
            if node.op not in _RELAYOUT_OPS:
                if _keeps_grid(node, sources[0], out, (len(out.shape) - 2, len(out.shape) - 1)):
                    grid.add(out.name)
                continue
            perm = list(node.attrs.get("perm", range(len(out.shape)))) if node.op == "Transpose" else None
            kept = perm[-2:] == [len(out.shape) - 2, len(out.shape) - 1] if perm is not None else \
                _same_sizes(out.shape[-2:], sources[0].shape[-2:] if sources[0].shape else None)
            if kept:
                grid.add(out.name)
    return grid


def _keeps_grid(node: gs.Node, source: gs.Tensor, out: gs.Tensor, axes: tuple[int, int]) -> bool:
    """Whether an op that keeps the layout keeps the image's grid on `axes`: not a Concat along one (a roll, as
    Swin's shifted windows write it, moves every position), nor a Slice that crops one (a roll's halves; a strided
    Slice that takes every s-th position, as patch merging does, samples the whole grid)."""
    if node.op == "Concat":
        return node.attrs.get("axis", 0) % len(out.shape) not in axes
    if node.op != "Slice" or source.shape is None or out.shape is None or len(source.shape) != len(out.shape):
        return True
    steps = constant_value(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4].name else None
    step_of = dict.fromkeys(range(len(out.shape)), 1)
    if steps is not None:
        sliced = constant_value(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
        for axis, step in zip(range(len(steps)) if sliced is None else sliced, steps):
            step_of[int(axis) % len(out.shape)] = abs(int(step))
    for axis in axes:
        size, kept = source.shape[axis], out.shape[axis]
        if isinstance(size, int) and isinstance(kept, int) and kept != -(-size // step_of[axis]):
            return False
    return True


def _same_sizes(a, b) -> bool:
    return b is not None and all(isinstance(m, int) and m == n for m, n in zip(a, b))


def _patch_grid(canonical: Canonical) -> tuple[int, int, int] | None:
    """(h, w, channels) of the patch-embedding Conv, the first Conv the image reaches, where its output is static."""
    readers = image_readers(canonical)
    for node in canonical.graph.nodes:
        if node.name in readers and node.op == "Conv":
            shape = node.outputs[0].shape
            if shape is not None and len(shape) == 4 and all(isinstance(d, int) for d in shape[1:]):
                return shape[2], shape[3], shape[1]
    return None


def _token_grid(node, name: str, shape: tuple, patches, on_grid: set[str], channel_last: set[str],
                image_size) -> TokenGrid | None:
    """Where the image grid lies in a token or channels-last tensor; None for any other tensor, and for a relayout
    of an [N, C, h, w] layer (the Conv's output transposed to [N, h, w, C] or flattened to [N, D, h * w]), which is
    that layer in other axes."""
    if node.op in _RELAYOUT_OPS and any(t.name in on_grid for t in node.inputs):
        return None
    if name in channel_last:
        if len(shape) == 4 and all(isinstance(d, int) for d in shape[1:3]) and shape[1] * shape[2] > 1 \
                and _on_image_grid([shape[0], shape[3], shape[1], shape[2]], image_size):
            return TokenGrid(0, shape[1], shape[2], channels_last=True)
        return None
    if patches is None or len(shape) != 3 or not all(isinstance(d, int) for d in shape[1:]):
        return None
    extra = shape[1] - patches[0] * patches[1]
    if 0 <= extra <= MAX_EXTRA_TOKENS:
        return TokenGrid(extra, patches[0], patches[1])
    for factor in (2, 4, 8, 16, 32):  # patch merging: no class token, each merge halves both sides
        if patches[0] % factor == 0 and patches[1] % factor == 0 \
                and 1 < shape[1] == (patches[0] // factor) * (patches[1] // factor):
            return TokenGrid(0, patches[0] // factor, patches[1] // factor)
    return None


# Ops after which a tensor's axes mean something else; every other op keeps its input's layout.
_RELAYOUT_OPS = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "DepthToSpace", "SpaceToDepth")
_TO_CHANNEL_LAST = [0, 2, 3, 1]


def _channel_last(canonical: Canonical) -> set[str]:
    """Names of the 4-D tensors laid out [N, H, W, C] (TensorFlow graphs): an NHWC image and Transposes to
    [0, 2, 3, 1], followed through the ops that keep a layout. They are not layers: their axis 1 is not channels."""
    found = {canonical.image.name} if canonical.layout == "NHWC" else set()
    for node in canonical.graph.nodes:
        read = [t for t in node.inputs if t.name in found]
        if node.op == "Transpose":
            perm = list(node.attrs.get("perm", []))
            last = perm == _TO_CHANNEL_LAST if not read else perm == list(range(4))
        else:
            last = bool(read) and node.op not in _RELAYOUT_OPS and all(
                _keeps_grid(node, read[0], out, (1, 2)) for out in node.outputs)
        if last:
            found.update(t.name for t in node.outputs if t.shape is not None and len(t.shape) == 4)
    return found


def resolve(canonical: Canonical, selectors) -> list[Target]:
    options = candidates(canonical)
    if not options:
        raise LayerSelectionError("the model has no layer to explain: no float [N, C, h, w] activation with a "
                                  f"spatial grid on the path from its input to its class scores. {_found(canonical)}")
    targets: dict[str, Target] = {}
    by_tensor = {c.tensor: c for c in options}
    for selector in selectors:
        tensor = _resolve_one(canonical, options, str(selector))
        key = str(selector)  # `auto` stays `auto`: the chosen tensor is printed and in the model's metadata
        targets.setdefault(key, Target(key, tensor, by_tensor[tensor].tokens if tensor in by_tensor else None))
    return list(targets.values())


def _resolve_one(canonical: Canonical, options: list[Candidate], selector: str) -> str:
    by_tensor = {c.tensor: c for c in options}
    if selector == IMAGE and IMAGE not in by_tensor:
        if canonical.layout != "NCHW":
            raise LayerSelectionError("layer 'input' (the image itself) needs an NCHW image input; this model's "
                                      f"is {canonical.layout}")
        return canonical.image.name
    if selector == "auto":
        return _auto(canonical, options).tensor
    if selector.lstrip("-").isdigit() and selector.startswith("-"):
        position = int(selector)
        if -len(options) <= position < 0:
            return options[position].tensor
        raise LayerSelectionError(f"layer index {position} is out of range: the model has {len(options)} "
                                  f"candidate layers (-1 .. -{len(options)}); run `onnx-rcam layers MODEL`")
    if selector in by_tensor:
        return selector
    for node in canonical.graph.nodes:
        if node.name == selector:
            outputs = [t.name for t in node.outputs if t.name in by_tensor]
            if outputs:
                return outputs[0]
            raise LayerSelectionError(f"node {selector!r} ({node.op}) does not produce a 4-D activation on the path "
                                      f"from the input to the class scores")
    in_scope = [c for c in options if c.scope == selector or c.scope.startswith(selector + ".")]
    if in_scope:
        return in_scope[-1].tensor
    prefixes = {".".join(parts[:i]) for c in options if c.scope for parts in [c.scope.split(".")]
                for i in range(1, len(parts) + 1)}
    names = [c.tensor for c in options] + sorted(prefixes)
    close = difflib.get_close_matches(selector, names, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise LayerSelectionError(f"layer {selector!r} matches no tensor, node or module scope on the path from the "
                              f"input to the class scores.{hint} Run `onnx-rcam layers MODEL` to list them.")


# Ops that pass the image on unchanged in value, only moved or cast.
_VALUE_KEEPING_OPS = _RELAYOUT_OPS + ("Identity", "Cast")
IMAGE = "input"  # the selector of the image itself, for input-level heatmaps


def image_readers(canonical: Canonical) -> frozenset[str]:
    """Names of the nodes that compute on the image's values first (the first Conv): those read the image directly
    or through ops that only move its values."""
    seen, stack, readers = set(), [canonical.image], set()
    while stack:
        tensor = stack.pop()
        for node in tensor.outputs:
            if node.op in _VALUE_KEEPING_OPS:
                stack.extend(t for t in node.outputs if t.name not in seen)
                seen.update(t.name for t in node.outputs)
            else:
                readers.add(node.name)
    return frozenset(readers)


def _found(canonical: Canonical) -> str:
    """What the path from the image to the class scores holds instead of a layer, for the error message."""
    on_path = _descendants([canonical.image]) & _ancestors(canonical.logits)
    channel_last = _channel_last(canonical)
    tensors = [t for node in canonical.graph.nodes for t in node.outputs if t.name in on_path]
    reasons = []
    for tensor in tensors:
        if tensor.shape is None:
            continue
        if len(tensor.shape) == 4:
            why = ("laid out [N, h, w, C]" if tensor.name in channel_last else "not float" if not _is_float(tensor)
                   else "a 1 x 1 grid" if _spatial_size(tensor.shape) <= 1 else "not on the image's grid")
            reasons.append(f"{tensor.name} {list(tensor.shape)} ({why})")
    unknown = sum(t.shape is None for t in tensors)
    ops = sorted({f"{n.domain}:{n.op}" if n.domain else n.op for n in canonical.graph.nodes
                  if any(t.name in on_path for t in n.outputs)})
    found = f"Found 4-D tensors: {'; '.join(reasons[:6])}{' ...' if len(reasons) > 6 else ''}." if reasons else \
        "Found no 4-D tensor."
    if unknown:
        found += f" {unknown} tensors on the path have no known shape (ONNX shape inference does not know an op)."
    return f"{found} Ops on the path: {', '.join(ops) or 'none'}."


def _is_float(tensor: gs.Tensor) -> bool:
    """Float or of unknown type: an INT8 model's quantized tensors are codes, not activations."""
    return tensor.dtype is None or np.issubdtype(np.dtype(tensor.dtype), np.floating)


def _on_image_grid(shape, image_size) -> bool:
    """Whether h x w could be the image's grid: downsampled by about the same factor along both axes (rounding
    aside). A [N, 1, 1, K] tensor (pooled features reshaped to NHWC, as tf2onnx writes them), an [N, H, W, C] one, or
    a grid strided along one axis only (halfway through Swin's patch merging) has no such grid. A dynamic size
    could be anything."""
    factors = [size / extent for size, extent in zip(image_size, shape[2:])
               if isinstance(size, int) and isinstance(extent, int) and extent > 0]
    return len(factors) < 2 or max(factors) <= 1.5 * min(factors)


def _spatial_size(shape) -> int:
    h, w = shape[2], shape[3]
    return h * w if isinstance(h, int) and isinstance(w, int) else 2  # dynamic: assume a grid


def region(canonical: Canonical, targets: list[Target]) -> set[str]:
    """Names of the tensors on some path from a target layer to the logits: the ones that need relevance."""
    tensors = canonical.graph.tensors()
    return _descendants([tensors[t.tensor] for t in targets]) & _ancestors(canonical.logits)


def _descendants(start: list[gs.Tensor], avoid: str | None = None) -> set[str]:
    """Names of the tensors computed from `start` (itself included), not through the tensor `avoid`."""
    seen, stack = set(), list(start)
    while stack:
        tensor = stack.pop()
        if tensor.name in seen or tensor.name == avoid:
            continue
        seen.add(tensor.name)
        stack.extend(out for reader in tensor.outputs for out in reader.outputs)
    return seen


def _ancestors(end: gs.Tensor) -> set[str]:
    seen, stack = set(), [end]
    while stack:
        tensor = stack.pop()
        if tensor.name in seen:
            continue
        seen.add(tensor.name)
        stack.extend(i for producer in tensor.inputs for i in producer.inputs if isinstance(i, gs.Variable))
    return seen
