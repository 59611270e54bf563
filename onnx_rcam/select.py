"""Stage 3: resolve layer selectors to activation tensors, and find the sub-graph the sweep must walk."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .canonicalize import Canonical
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
    """The last height * width of a layer's T tokens are the image's patches, row by row; the first `prefix` are
    class, distillation or register tokens (DESIGN.md section 6, token layers)."""
    prefix: int
    height: int
    width: int


@dataclass(frozen=True)
class Target:
    key: str     # the selector as given; `auto` becomes the tensor name
    tensor: str
    tokens: TokenGrid | None = None


MAX_EXTRA_TOKENS = 8  # class, distillation and register tokens before the patches


def candidates(canonical: Canonical) -> list[Candidate]:
    """The layers that can be explained, in topological order, all produced by a node on a path from the image to
    the logits: float 4-D activations laid out [N, C, h, w] on the image's grid, downsampled (more than 1 x 1), and
    a transformer's [N, T, D] tokens whose last h x w are the patches of the patch-embedding Conv."""
    on_path = _descendants([canonical.image]) & _ancestors(canonical.logits)
    channel_last = _channel_last(canonical)
    on_grid = _grid_tensors(canonical, channel_last)
    patches = _patch_grid(canonical)
    height = canonical.image_size[0]
    found = []
    for node in canonical.graph.nodes:
        for tensor in node.outputs:
            if tensor.name not in on_path or tensor.shape is None or not _is_float(tensor):
                continue
            tokens = _token_grid(node, tensor, patches, on_grid)
            if tokens is not None:
                found.append(Candidate(len(found), tensor.name, node.op, tuple(tensor.shape),
                                       height / tokens.height, canonical.scopes.get(tensor.name, ""), tokens))
            elif (tensor.name in on_grid and tensor.name not in channel_last and len(tensor.shape) == 4
                    and _spatial_size(tensor.shape) > 1 and _on_image_grid(tensor.shape, canonical.image_size)):
                h = tensor.shape[2]
                factor = height / h if isinstance(h, int) and h else float("nan")
                found.append(Candidate(len(found), tensor.name, node.op, tuple(tensor.shape), factor,
                                       canonical.scopes.get(tensor.name, "")))
    return found


def _auto(canonical: Canonical, options: list[Candidate]) -> Candidate:
    """The last activation with a grid, the one global pooling or flattening consumes (of known size where any is).
    In a transformer, whose class score reads the class token after the last block, the patches at the last token
    layer get no relevance and no gradient: there it is the last token layer of the model's width that feeds the
    last attention (the last block's normalised input, as pytorch-grad-cam advises for ViTs)."""
    known = [c for c in options if all(isinstance(d, int) for d in c.shape[2:])] or options
    if known[-1].tokens is None:
        return known[-1]
    attention = [n for n in canonical.graph.nodes if n.op in ("MatMul", "Einsum")
                 and any(map(is_attention_weights, n.inputs))]
    if not attention:
        return known[-1]
    feeding = _ancestors(attention[-1].outputs[0])
    width = _patch_grid(canonical)[2]  # the patch embedding's channels: the residual stream's width
    chosen = [c for c in known if c.tokens is not None and c.tensor in feeding and c.shape[2] == width]
    return (chosen or known)[-1]


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
                grid.add(out.name)
                continue
            perm = list(node.attrs.get("perm", range(len(out.shape)))) if node.op == "Transpose" else None
            kept = perm[-2:] == [len(out.shape) - 2, len(out.shape) - 1] if perm is not None else \
                _same_sizes(out.shape[-2:], sources[0].shape[-2:] if sources[0].shape else None)
            if kept:
                grid.add(out.name)
    return grid


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


def _token_grid(node, tensor, patches, on_grid: set[str]) -> TokenGrid | None:
    """Where the patches lie in an [N, T, D] token tensor; None for any other tensor (the Conv's output flattened
    to [N, D, h * w], which its Reshape or Flatten makes from the grid, is not tokens yet)."""
    shape = tensor.shape
    if patches is None or len(shape) != 3 or not all(isinstance(d, int) for d in shape[1:]):
        return None
    if node.op in _RELAYOUT_OPS and any(t.name in on_grid for t in node.inputs):
        return None
    extra = shape[1] - patches[0] * patches[1]
    return TokenGrid(extra, patches[0], patches[1]) if 0 <= extra <= MAX_EXTRA_TOKENS else None


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
            last = bool(read) and node.op not in _RELAYOUT_OPS
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
        key = tensor if selector == "auto" else str(selector)
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
    """Whether h x w could be the image's grid: downsampled by about the same factor along both axes. A
    [N, 1, 1, K] tensor (pooled features reshaped to NHWC, as tf2onnx writes them) or an [N, H, W, C] one has no
    such grid. A dynamic size could be anything."""
    factors = [size / extent for size, extent in zip(image_size, shape[2:])
               if isinstance(size, int) and isinstance(extent, int) and extent > 0]
    return len(factors) < 2 or max(factors) <= 2 * min(factors)


def _spatial_size(shape) -> int:
    h, w = shape[2], shape[3]
    return h * w if isinstance(h, int) and isinstance(w, int) else 2  # dynamic: assume a grid


def region(canonical: Canonical, targets: list[Target]) -> set[str]:
    """Names of the tensors on some path from a target layer to the logits: the ones that need relevance."""
    tensors = canonical.graph.tensors()
    return _descendants([tensors[t.tensor] for t in targets]) & _ancestors(canonical.logits)


def _descendants(start: list[gs.Tensor]) -> set[str]:
    seen, stack = set(), list(start)
    while stack:
        tensor = stack.pop()
        if tensor.name in seen:
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
