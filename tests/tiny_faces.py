"""Tiny ONNX stand-ins for InsightFace's networks with their real inputs and outputs (SCRFD detection: score / bbox
/ kps per stride 8, 16, 32 on a 640×640 canvas, det_10g's output order; ArcFace recognition: 112×112 → 512),
whose answers a test decides: the detector returns fixed tables, lifted by the picture's brightness (dark
pictures have no face)."""
from __future__ import annotations

import numpy as np

STRIDES = (8, 16, 32)


def anchor(stride: int, gx: int, gy: int, a: int) -> int:
    """The row of anchor `a` at grid cell (gx, gy) in a stride's outputs (two anchors per cell)."""
    return (gy * (640 // stride) + gx) * 2 + a


def empty_tables() -> dict:
    """{width: {stride: rows}} for scores (1), boxes (4) and landmarks (10): no face anywhere."""
    tables = {k: {s: np.zeros(((640 // s) ** 2 * 2, k)) for s in STRIDES} for k in (1, 4, 10)}
    for s in STRIDES:
        tables[1][s][:] = -30.0
    return tables


def scrfd_onnx(path, tables: dict, gain: float) -> None:
    """score = sigmoid(table + gain × the input's mean); boxes and landmarks = the tables."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(gain, np.float32), "gain"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    nodes = [helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "gain"], ["lift"]), helper.make_node("Mul", ["mean", "zero"], ["none"])]
    outputs = []
    for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
        for s in STRIDES:
            name = f"{kind}_{s}"
            inits.append(numpy_helper.from_array(tables[width][s].astype(np.float32), name + "_table"))
            if kind == "score":
                nodes += [helper.make_node("Add", [name + "_table", "lift"], [name + "_logit"]),
                          helper.make_node("Sigmoid", [name + "_logit"], [name])]
            else:
                nodes.append(helper.make_node("Add", [name + "_table", "none"], [name]))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(tables[width][s].shape)))
    graph = helper.make_graph(nodes, "scrfd", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT,
                                                                             [1, 3, 640, 640])], outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def arcface_onnx(path, weight: np.ndarray, output: str) -> None:
    """8×8 average pooling, flattened, times `weight` (3·14·14 × 512): a linear stand-in for the embedding."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
             helper.make_node("Flatten", ["pooled"], ["flat"]), helper.make_node("Gemm", ["flat", "w"], [output])]
    graph = helper.make_graph(nodes, "arcface", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT,
                                                                               [1, 3, 112, 112])],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, [1, 512])],
                              [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
