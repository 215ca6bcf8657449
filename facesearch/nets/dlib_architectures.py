"""The two dlib network definitions we convert, as flat bottom-up op plans.

dlib's files store layers without tag/skip ids; these plans restate the C++ type
definitions (``dnn_face_recognition_ex.cpp`` and ``dnn_mmod_face_detection_ex.cpp``)
so that :func:`match_plan` can check the file layer by layer and attach the ids.
An op is ``(kind, arg)``: a computational layer kind (``arg`` None), or
``("tag", n)``, ``("skip", n)``, ``("add_prev", n)``.
"""

from __future__ import annotations

from facesearch.errors import ModelFormatError
from facesearch.nets.dlib_dnn import DnnLayer, DnnModel

Op = tuple[str, int | None]


def _resnet_block(down: bool) -> list[Op]:
    block: list[Op] = [("tag", 1), ("con", None), ("affine", None), ("relu", None), ("con", None), ("affine", None)]
    if down:  # add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<...,tag1<SUBNET>>>>>>
        return [*block, ("tag", 2), ("skip", 1), ("avg_pool", None), ("add_prev", 2), ("relu", None)]
    return [*block, ("add_prev", 1), ("relu", None)]  # add_prev1<block<...,tag1<SUBNET>>>


def resnet_plan() -> list[Op]:
    """dlib_face_recognition_resnet_model_v1: ResNet-29-ish metric network, 150x150 -> 128."""
    plan: list[Op] = [("con", None), ("affine", None), ("relu", None), ("max_pool", None)]
    levels = [(3, False), (4, True), (3, True), (3, True), (1, True)]  # alevel4 .. alevel0
    for count, first_down in levels:
        plan += _resnet_block(first_down)
        plan += [op for _ in range(count - 1) for op in _resnet_block(False)]
    return [*plan, ("avg_pool", None), ("fc", None)]


def mmod_plan() -> list[Op]:
    """mmod_human_face_detector: 3 strided 5x5 convs (downsampler), 3 rcon5, a 9x9 scorer."""
    rcon: list[Op] = [("con", None), ("affine", None), ("relu", None)]
    return rcon * 6 + [("con", None)]


def match_plan(model: DnnModel, plan: list[Op], name: str) -> list[tuple[Op, DnnLayer]]:
    """Pair each op with the file's layer, failing with the first disagreement."""
    if len(plan) != len(model.layers):
        raise ModelFormatError(f"{name}: file has {len(model.layers)} layers, the {name} network has {len(plan)}")
    paired = []
    for i, (op, layer) in enumerate(zip(plan, model.layers, strict=True)):
        expected = "marker" if op[0] in ("tag", "skip") else op[0]
        if layer.kind != expected:
            raise ModelFormatError(f"{name}: layer {i} (from the input) is {layer.kind!r}, expected {expected!r}")
        paired.append((op, layer))
    return paired
