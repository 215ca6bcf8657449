"""Read a serialized dlib DNN (``dlib/dnn/core.h`` + ``layers.h`` + ``input.h`` + ``loss.h``).

dlib serializes a network as nested objects: the loss layer's version and details,
then, for each layer from the top of the stack down, its wrapper's version; at the
bottom the input layer; then, unwinding, each computational layer's details and
training state. Tag and skip wrappers (``tag1``, ``skip1``) carry no details and no
ids, so the reader returns the stack bottom-up as a flat list in which they appear as
``marker`` entries; :mod:`facesearch.nets.dlib_architectures` matches that list against the
known network definition, which supplies the ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facesearch.errors import ModelFormatError
from facesearch.nets.dlib_stream import DlibStream


@dataclass(frozen=True, slots=True)
class DnnLayer:
    """One layer of a dlib network, bottom-up. ``kind`` is dlib's tag without version suffix."""

    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DnnModel:
    loss: DnnLayer
    input: DnnLayer
    layers: tuple[DnnLayer, ...]  # bottom-up, input excluded

    def kinds(self) -> list[str]:
        return [layer.kind for layer in self.layers]


def _split_params(params: np.ndarray, sizes: list[int], what: str, s: DlibStream) -> list[np.ndarray]:
    flat = params.reshape(-1)
    if flat.size != sum(sizes):
        raise s.fail(f"{what}: params hold {flat.size} values, expected {sum(sizes)}")
    out, start = [], 0
    for n in sizes:
        out.append(flat[start : start + n])
        start += n
    return out


def _read_con(s: DlibStream, tag: str) -> DnnLayer:
    params = s.tensor("con_ params")
    num_filters = s.int("con_ num_filters")
    nr, nc = s.int("con_ nr"), s.int("con_ nc")
    stride_y, stride_x = s.int("con_ stride_y"), s.int("con_ stride_x")
    pad_y, pad_x = s.int("con_ padding_y"), s.int("con_ padding_x")
    filters = s.alias_tensor("con_ filters")
    biases = s.alias_tensor("con_ biases")
    for _ in range(4):
        s.float("con_ learning-rate multiplier")
    use_bias = s.bool("con_ use_bias") if tag in ("con_5", "con_6") else True
    use_relu = s.bool("con_ use_relu") if tag == "con_6" else False
    n_filter = int(np.prod(filters))
    n_bias = int(np.prod(biases)) if use_bias else 0
    if params.size not in (n_filter + n_bias, n_filter + int(np.prod(biases))):
        raise s.fail(f"con_ params hold {params.size} values, filters {filters} + biases {biases} expected")
    flat = params.reshape(-1)
    weight = flat[:n_filter].reshape(filters)
    bias = flat[n_filter : n_filter + int(np.prod(biases))] if use_bias else np.zeros(num_filters, np.float32)
    if weight.shape[0] != num_filters or tuple(weight.shape)[2:] != (nr, nc):
        raise s.fail(f"con_ filters {weight.shape} disagree with {num_filters} filters of {nr}x{nc}")
    return DnnLayer(
        "con",
        {
            "num_filters": num_filters,
            "kernel": (nr, nc),
            "stride": (stride_y, stride_x),
            "padding": (pad_y, pad_x),
            "use_relu": use_relu,
        },
        {"weight": weight.copy(), "bias": bias.astype(np.float32).copy()},
    )


def _read_fc(s: DlibStream, tag: str) -> DnnLayer:
    num_outputs = s.int("fc_ num_outputs")
    num_inputs = s.int("fc_ num_inputs")
    params = s.tensor("fc_ params")
    weights = s.alias_tensor("fc_ weights")
    biases = s.alias_tensor("fc_ biases")
    bias_mode = s.int("fc_ bias mode")
    for _ in range(4):
        s.float("fc_ learning-rate multiplier")
    if tag == "fc_3":
        s.bool("fc_ use_bias")
    n_w = int(np.prod(weights))
    flat = params.reshape(-1)
    if flat.size < n_w or weights[0] != num_inputs:
        raise s.fail(f"fc_ params {flat.size} values do not hold weights {weights}")
    # dlib stores fc weights as (num_inputs, num_outputs), applied as x @ W.
    weight = flat[:n_w].reshape(num_inputs, num_outputs)
    has_bias = bias_mode == 0  # FC_HAS_BIAS
    bias = flat[n_w : n_w + num_outputs] if has_bias else np.zeros(num_outputs, np.float32)
    del biases
    return DnnLayer(
        "fc",
        {"num_outputs": num_outputs, "has_bias": has_bias},
        {"weight": weight.copy(), "bias": bias.astype(np.float32).copy()},
    )


def _read_affine(s: DlibStream, tag: str) -> DnnLayer:
    if tag in ("bn_con2", "bn_fc2"):
        params = s.tensor("bn_ params")
        gamma_shape = s.alias_tensor("bn_ gamma")
        s.alias_tensor("bn_ beta")
        s.tensor("bn_ means")
        s.tensor("bn_ invstds")
        running_means = s.tensor("bn_ running_means").reshape(-1).astype(np.float64)
        running_vars = s.tensor("bn_ running_variances").reshape(-1).astype(np.float64)
        s.int("bn_ num_updates")
        s.int("bn_ running_stats_window_size")
        for _ in range(4):
            s.float("bn_ learning-rate multiplier")
        eps = s.float("bn_ eps")
        n = int(np.prod(gamma_shape))
        gamma, beta = _split_params(params, [n, n], "bn_", s)
        # dlib converts bn_ to affine_ at load time (layers.h, affine_(const bn_&)).
        scale = gamma.astype(np.float64) / np.sqrt(running_vars + eps)
        shift = beta.astype(np.float64) - scale * running_means
        mode = "conv" if tag == "bn_con2" else "fc"
        return DnnLayer(
            "affine",
            {"mode": mode, "from": "bn", "eps": eps},
            {"gamma": scale.astype(np.float32), "beta": shift.astype(np.float32)},
        )
    params = s.tensor("affine_ params")
    gamma_shape = s.alias_tensor("affine_ gamma")
    s.alias_tensor("affine_ beta")
    mode_id = s.int("affine_ mode")
    if tag == "affine_2" and s.bool("affine_ disabled"):
        raise s.fail("disabled affine_ layers are not supported")
    n = int(np.prod(gamma_shape))
    gamma, beta = _split_params(params, [n, n], "affine_", s)
    return DnnLayer(
        "affine",
        {"mode": "conv" if mode_id == 0 else "fc", "from": "affine"},
        {"gamma": gamma.astype(np.float32).copy(), "beta": beta.astype(np.float32).copy()},
    )


def _read_pool(s: DlibStream, kind: str) -> DnnLayer:
    nr, nc = s.int(f"{kind} nr"), s.int(f"{kind} nc")
    stride_y, stride_x = s.int(f"{kind} stride_y"), s.int(f"{kind} stride_x")
    pad_y, pad_x = s.int(f"{kind} padding_y"), s.int(f"{kind} padding_x")
    return DnnLayer(kind, {"kernel": (nr, nc), "stride": (stride_y, stride_x), "padding": (pad_y, pad_x)})


def _read_relu(s: DlibStream, tag: str) -> DnnLayer:
    if tag == "relu_2" and s.bool("relu_ disabled"):
        raise s.fail("disabled relu_ layers are not supported")
    return DnnLayer("relu")


_LAYER_TAGS = {
    "con_4": _read_con,
    "con_5": _read_con,
    "con_6": _read_con,
    "fc_2": _read_fc,
    "fc_3": _read_fc,
    "bn_con2": _read_affine,
    "bn_fc2": _read_affine,
    "affine_": _read_affine,
    "affine_2": _read_affine,
    "max_pool_2": lambda s, tag: _read_pool(s, "max_pool"),
    "avg_pool_2": lambda s, tag: _read_pool(s, "avg_pool"),
    "relu_": _read_relu,
    "relu_2": _read_relu,
    "add_prev_": lambda s, tag: DnnLayer("add_prev"),
}


def _read_layer_details(s: DlibStream) -> DnnLayer:
    tag = s.expect_string(*_LAYER_TAGS)
    return _LAYER_TAGS[tag](s, tag)


def _read_input(s: DlibStream) -> DnnLayer:
    tag = s.expect_string(
        "input_rgb_image_sized", "input_rgb_image", "input_rgb_image_pyramid", "input_rgb_image_pyramid2"
    )
    avg = (s.float("avg_red"), s.float("avg_green"), s.float("avg_blue"))
    attrs: dict[str, Any] = {"avg_rgb": avg}
    if tag == "input_rgb_image_sized":
        attrs["size"] = (s.int("input rows"), s.int("input cols"))
        return DnnLayer("input_rgb_image_sized", attrs)
    if tag == "input_rgb_image":
        return DnnLayer("input_rgb_image", attrs)
    if tag == "input_rgb_image_pyramid2":
        attrs["pyramid_padding"] = s.int("pyramid_padding")
        attrs["pyramid_outer_padding"] = s.int("pyramid_outer_padding")
    else:
        attrs["pyramid_padding"], attrs["pyramid_outer_padding"] = 10, 11
    return DnnLayer("input_rgb_image_pyramid", attrs)


def _read_loss(s: DlibStream) -> DnnLayer:
    tag = s.expect_string("loss_metric_", "loss_metric_2", "loss_mmod_")
    if tag == "loss_metric_":
        return DnnLayer("loss_metric", {"margin": 0.1, "dist_thresh": 0.75})
    if tag == "loss_metric_2":
        return DnnLayer("loss_metric", {"margin": s.float("margin"), "dist_thresh": s.float("dist_thresh")})
    version = s.expect_int((1, 2, 3, 4), "mmod_options version")
    if version == 1:
        windows = [(s.int("window width"), s.int("window height"), "")]
    else:
        count = s.int("detector window count")
        windows = []
        for _ in range(count):
            wv = s.expect_int((1, 2), "detector window version")
            w, h = s.int("window width"), s.int("window height")
            windows.append((w, h, s.string("window label") if wv == 2 else ""))
    attrs: dict[str, Any] = {
        "detector_windows": windows,
        "loss_per_false_alarm": s.float("loss_per_false_alarm"),
        "loss_per_missed_target": s.float("loss_per_missed_target"),
        "truth_match_iou_threshold": s.float("truth_match_iou_threshold"),
        "overlaps_nms": (s.float("nms iou"), s.float("nms percent covered")),
        "overlaps_ignore": (s.float("ignore iou"), s.float("ignore percent covered")),
        "assume_image_pyramid": True,
        "use_bounding_box_regression": False,
    }
    if version >= 3:
        attrs["assume_image_pyramid"] = bool(s.byte("assume_image_pyramid"))
    if version >= 4:
        attrs["use_bounding_box_regression"] = s.bool("use_bounding_box_regression")
        attrs["bbr_lambda"] = s.float("bbr_lambda")
    return DnnLayer("loss_mmod", attrs)


def _skip_training_state(s: DlibStream, *, bottom: bool, version: int) -> None:
    for what in ("this_layer_setup_called", "gradient_input_is_stale", "output disabled flag"):
        s.bool(what)
    s.tensor("x_grad")
    s.tensor("cached_output")
    s.tensor("grad_final" if bottom else "params_grad") if (bottom or version == 2) else None
    if bottom and version >= 3:
        s.int("sample expansion factor")


def _next_is_input(s: DlibStream) -> bool:
    """After a wrapper version: does the input layer's tag follow (the bottom of the stack)?"""
    # A string is a length (control byte + 1 length byte for short tags) then its ASCII.
    return s.peek(7)[2:7] == b"input"


def read_dnn(s: DlibStream) -> DnnModel:
    """Parse a whole network file; raises ModelFormatError naming what was expected."""
    s.expect_int(1, "add_loss_layer version")
    loss = _read_loss(s)
    wrappers: list[int] = []
    while True:
        version = s.int("layer wrapper version")
        if _next_is_input(s):
            bottom_version = version
            break
        if version not in (1, 2):
            raise s.fail(f"unexpected layer wrapper version {version}")
        wrappers.append(version)
        if len(wrappers) > 10_000:
            raise s.fail("no input layer found after 10000 layers")
    if bottom_version not in (2, 3):
        raise s.fail(f"unexpected input wrapper version {bottom_version}")
    input_layer = _read_input(s)
    layers = [_read_layer_details(s)]
    _skip_training_state(s, bottom=True, version=bottom_version)
    for version in reversed(wrappers):
        if version == 1:  # tag or skip wrapper: no details of its own
            layers.append(DnnLayer("marker"))
            continue
        layers.append(_read_layer_details(s))
        _skip_training_state(s, bottom=False, version=version)
    s.expect_end()
    return DnnModel(loss=loss, input=input_layer, layers=tuple(layers))


def read_dnn_file(path: str) -> DnnModel:
    try:
        return read_dnn(DlibStream.from_file(path))
    except ModelFormatError:
        raise
    except (ValueError, IndexError) as err:  # numpy reshape of inconsistent shapes
        raise ModelFormatError(f"{path}: inconsistent dlib network data: {err}") from err
