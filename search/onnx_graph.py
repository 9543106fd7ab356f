"""What an ONNX graph costs, known before ONNX Runtime runs it: its operators, then every tensor's shape.

search/predict.py runs a model.onnx anyone could have written. Its operators are checked first (no
control flow, only what an export holds and a few of fixed cost per element), yet those alone
were no bound: a 272 KB file broadcasting (M, 1) + (1, M) took 3.7 GB, and a 66 KB chain of 606
nodes ran for over 120 s. So every tensor's shape is inferred for the batch size that will run
(ONNX's shape inference, strict, with data propagation: a Reshape to a computed shape is known
too), a graph with a shape it cannot know is refused, and the work and memory the shapes add up
to are bounded per image. Only shapes are inferred: the weights are left out of the copy inferred
on, so a 1 GB model is not copied to be checked.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.digit_inputs import PredictError, first_line, shown

# The operators a graph may use: what search.export writes (Gemm, Relu, Softmax), and a few that do
# a fixed amount of work per element. Control flow is refused: a 32 KB graph looping 10^15 times
# around an Add ran forever.
_PER_ELEMENT = ("Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Exp", "Clip", "Softmax", "LogSoftmax")
OPERATORS = frozenset((*_PER_ELEMENT, "Identity", "Constant", "Cast", "Flatten", "Reshape", "Shape", "Slice", "Transpose", "ReduceMax"))
CONTROL_FLOW = ("Loop", "Scan", "If")
MAX_GRAPH_NODES = 1_000  # an export has two per layer and a softmax: 10 for 4 hidden layers
# The largest net the search can export (search/settings_space.py: 4 hidden layers of 8192 units)
# does 784*8192 + 3*8192^2 + 8192*10 = 207,831,040 multiply-adds per image, and makes 65,566
# values per image (each Gemm's and Relu's output, the logits, the probabilities). The bounds leave
# room above both; an element-wise value costs far more time than a multiply-add of a matrix
# product, so the two are bounded apart.
MAX_MULTIPLY_ADDS_PER_IMAGE = 500_000_000
MAX_VALUES_PER_IMAGE = 1 << 20  # 4 MB of float32 per image, ~1 GB for a chunk of 256 images
SMALL_TENSOR = 1024  # elements of a weight kept in the copy shapes are inferred on: a Reshape's target, a Slice's ends
_MATRIX_PRODUCTS = ("Gemm", "MatMul")
_READ_WHOLE = ("ReduceMax", "Softmax", "LogSoftmax")  # read their input more than once, or whole to give little
_STRING = 8  # onnx.TensorProto.STRING: a string tensor's memory has no bound per element


def not_ours(file: Path, reason: str) -> PredictError:
    """An ONNX file that loads but is no digit classifier: ONNX Runtime or numpy would fail on it
    with a traceback, or print nonsense ("0 (inf%)"). One line says what is wrong and the fix."""
    return PredictError(f"{shown(file)}: not an mnist-search model ({reason}); export one with python -m search.export")


def unloadable(file: Path, error: Exception) -> PredictError:
    return PredictError(f"{shown(file)}: not a loadable ONNX model ({shown(first_line(error))})")


@dataclass(frozen=True)
class Cost:
    """A graph's work for one run: multiply-adds of its matrix products, values its nodes make (and reductions read)."""

    batch: int
    multiply_adds: int
    values: int


def _operator_of(node: Any) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def _check_operators(file: Path, model: Any) -> None:
    """Refuse control flow, any operator outside OPERATORS (in subgraphs too), more than
    MAX_GRAPH_NODES nodes (the walk stops there), and local functions: exports hold none, and a
    function named as a standard operator would run a body the cost below never saw. Refuse sparse
    tensors too (weights, a Constant's sparse_value): ONNX Runtime makes each dense, so 31 KB
    declaring unused 16000x16000 ones took 3 GB, and no node's output counts them."""
    if model.functions:
        raise not_ours(file, f"its graph defines functions of its own ({shown(repr(model.functions[0].name), 60)}), which exports never hold")
    graphs, count = [model.graph], 0
    while graphs:
        graph = graphs.pop()
        if graph.sparse_initializer:
            raise not_ours(file, f"it holds a sparse weight ({shown(repr(graph.sparse_initializer[0].values.name), 60)}), which exports never do")
        for node in graph.node:
            count += 1
            if count > MAX_GRAPH_NODES:
                raise not_ours(file, f"its graph has more than {MAX_GRAPH_NODES:,} nodes; an export has a few dozen at most")
            if any(a.HasField("sparse_tensor") or a.sparse_tensors for a in node.attribute):  # a Constant's sparse_value
                raise not_ours(file, f"its {_operator_of(node)} node holds a sparse tensor, which exports never do")
            op = _operator_of(node)
            if op not in OPERATORS:
                why = "control flow, whose cost has no bound" if op in CONTROL_FLOW else "an operator exports never hold"
                raise not_ours(file, f"its graph uses the operator {shown(repr(op), 60)}, {why}")
            graphs.extend([*(a.g for a in node.attribute if a.HasField("g")), *(g for a in node.attribute for g in a.graphs)])


def _tensors(graph: Any) -> Iterator[Any]:
    """Every tensor a graph holds: its weights and its nodes' constant attributes (sparse ones were refused)."""
    yield from graph.initializer
    for attribute in (a for node in graph.node for a in node.attribute):
        yield from (attribute.t, *attribute.tensors)


def _in_another_file(tensor: Any) -> bool:
    """Bytes in another file: ONNX Runtime, given the model's bytes, would read a path the file
    names relative to the current folder, any readable file (/etc/..., ../..) fed in as weights."""
    return tensor.data_location == 1 or len(tensor.external_data) > 0  # TensorProto.EXTERNAL


def _tensor_input(name: str, elem_type: int, dims: Any) -> Any:
    from onnx import helper

    return helper.make_tensor_value_info(name, elem_type, list(dims))


def _large_constant(node: Any) -> Any | None:
    """A Constant node holding more than SMALL_TENSOR values, as a graph input of its type and shape
    (its values are not needed to know shapes, and would be copied); None for any other node."""
    from onnx import TensorProto

    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
        return None
    (attr,) = node.attribute
    lists = {"value_floats": TensorProto.FLOAT, "value_ints": TensorProto.INT64, "value_strings": TensorProto.STRING}
    if attr.name == "value" and math.prod(attr.t.dims) > SMALL_TENSOR:
        return _tensor_input(node.output[0], attr.t.data_type, attr.t.dims)
    if attr.name in lists and len(getattr(attr, attr.name[6:])) > SMALL_TENSOR:  # value_floats -> attr.floats
        return _tensor_input(node.output[0], lists[attr.name], [len(getattr(attr, attr.name[6:]))])
    return None


def _shapes_only(model: Any) -> tuple[Any, list[str]]:
    """A copy of `model` to infer shapes on, and the names of its inputs fed at run time: its large
    weights and constants (each over SMALL_TENSOR values) become graph inputs of their type and
    shape, so the copy holds kilobytes whatever the model's size."""
    import onnx

    graph = model.graph
    large = {t.name for t in graph.initializer if math.prod(t.dims) > SMALL_TENSOR}
    weights = large | {t.name for t in graph.initializer}
    fed = [i.name for i in graph.input if i.name not in weights]
    copy = onnx.GraphProto(name=graph.name)
    copy.input.extend(i for i in graph.input if i.name not in large)  # IR version 3 lists every weight as an input too
    copy.output.extend(graph.output)
    for output in copy.output:  # its shape as declared goes: a fixed batch of 1 conflicted with the batch pinned
        if output.type.HasField("tensor_type"):
            output.type.tensor_type.ClearField("shape")
    for tensor in graph.initializer:
        if math.prod(tensor.dims) <= SMALL_TENSOR:
            copy.initializer.append(tensor)
        else:
            copy.input.append(_tensor_input(tensor.name, tensor.data_type, tensor.dims))
    for node in graph.node:
        constant = _large_constant(node)
        if constant is None:
            copy.node.append(node)
        else:
            copy.input.append(constant)
    return onnx.helper.make_model(copy, opset_imports=model.opset_import, ir_version=model.ir_version), fed


def _dims(value_info: Any) -> tuple[int, ...] | None:
    """A tensor's shape when every size is a number, else None."""
    kind = value_info.type
    if not kind.HasField("tensor_type") or not kind.tensor_type.HasField("shape"):
        return None
    dims = kind.tensor_type.shape.dim
    return tuple(d.dim_value for d in dims) if all(d.HasField("dim_value") for d in dims) else None


def _sizes(dims: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """`dims`, or None where a size is negative: a weight declared (-1, 10^9) would make a negative
    count that hides others from the sum."""
    return None if dims is None or any(size < 0 for size in dims) else dims


@dataclass
class Graph:
    """A model's graph read and its operators checked; `check(batch)` bounds a run of `batch` images."""

    file: Path
    shapes_model: Any  # the copy without its large weights
    fed: list[str]  # the inputs a run feeds (not weights)
    costs: dict[int, Cost] = field(default_factory=dict)  # batch sizes already checked

    def check(self, batch: int) -> Cost:
        """The cost of running `batch` images, or PredictError when a shape cannot be known or the
        cost passes the bounds. Checked for each batch size that runs, so the shapes checked are the
        shapes run (a graph may grow faster than its batch)."""
        if batch not in self.costs:
            self.costs[batch] = self._cost(batch)
        return self.costs[batch]

    def _inferred(self, batch: int) -> Any:
        """The copy with its fed inputs' first size set to `batch` and every shape inferred."""
        import onnx

        model = onnx.ModelProto()
        model.CopyFrom(self.shapes_model)
        for value_info in model.graph.input:
            dims = value_info.type.tensor_type.shape.dim
            if value_info.name in self.fed and value_info.type.HasField("tensor_type") and len(dims) > 0:
                dims[0].Clear()
                dims[0].dim_value = batch
        try:
            return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        except Exception as error:  # noqa: BLE001 - onnx raises InferenceError, ValidationError or bare RuntimeErrors
            raise not_ours(self.file, f"its shapes do not check ({shown(first_line(error), 200)})") from None

    def _cost(self, batch: int) -> Cost:
        inferred = self._inferred(batch)
        graph = inferred.graph
        shapes = {v.name: _sizes(_dims(v)) for v in (*graph.input, *graph.value_info, *graph.output)}
        shapes.update({t.name: _sizes(tuple(t.dims)) for t in graph.initializer})
        types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.output)}
        for name in self.fed:
            if shapes.get(name) is None:
                raise not_ours(self.file, f"its input {shown(repr(name), 60)} has sizes other than the batch left open, not (N, 784)")
        multiply_adds = values = 0
        for node in graph.node:
            outputs = [self._known(shapes, node, name, "an output") for name in node.output if name]
            if any(types.get(name) == _STRING for name in node.output):
                raise not_ours(self.file, f"its {_operator_of(node)} node makes strings, which exports never do")
            values += sum(math.prod(shape) for shape in outputs)
            inputs = [self._known(shapes, node, name, "an input") for name in node.input if name]
            if node.op_type in _READ_WHOLE:
                values += sum(math.prod(shape) for shape in inputs[:1])
            if node.op_type in _MATRIX_PRODUCTS and inputs and inputs[0]:
                multiply_adds += math.prod(outputs[0]) * _inner(node, inputs[0])
        cost = Cost(batch, multiply_adds, values)
        self._bound(cost)
        return cost

    def _known(self, shapes: dict[str, tuple[int, ...] | None], node: Any, name: str, role: str) -> tuple[int, ...]:
        """The shape of `node`'s tensor `name`, every size a number; else the one line that refuses the graph."""
        shape = shapes.get(name)
        if shape is None:
            what = f"{shown(repr(name), 60)}, {role} of its {_operator_of(node)} node"
            raise not_ours(self.file, f"the shape of {what}, cannot be known before it runs; an export's shapes all are")
        return shape

    def _bound(self, cost: Cost) -> None:
        per_image = f"for a batch of {cost.batch:,} images" if cost.batch > 1 else "for one image"
        if cost.multiply_adds > cost.batch * MAX_MULTIPLY_ADDS_PER_IMAGE:
            raise not_ours(self.file, f"its matrix products do {cost.multiply_adds:,} multiply-adds {per_image}, "
                           f"more than the {MAX_MULTIPLY_ADDS_PER_IMAGE:,} per image of the largest export with room to spare")
        if cost.values > cost.batch * MAX_VALUES_PER_IMAGE:
            raise not_ours(self.file, f"its nodes make {cost.values:,} values {per_image}, "
                           f"more than the {MAX_VALUES_PER_IMAGE:,} per image an export could need")


def _inner(node: Any, first: tuple[int, ...]) -> int:
    """The length a matrix product sums over: its first input's last size (its first for Gemm with transA)."""
    if not first:
        return 1
    trans_a = any(a.name == "transA" and a.i for a in node.attribute)
    return first[0] if node.op_type == "Gemm" and trans_a else first[-1]


def read_graph(file: Path, data: bytes) -> Graph:
    """`data` parsed as ONNX and checked (`graph_of`), and every weight in it: before ONNX Runtime sees it."""
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception as error:  # noqa: BLE001 - protobuf's DecodeError and onnx's own errors
        raise unloadable(file, error) from None
    graph = graph_of(file, model)
    graphs = [model.graph]
    while graphs:  # subgraphs too (_check_operators walked them: a bounded number)
        inner = graphs.pop()
        if any(_in_another_file(tensor) for tensor in _tensors(inner)):
            raise not_ours(file, "it keeps weights in another file (ONNX external data), which exports never do")
        graphs.extend(a.g for node in inner.node for a in node.attribute if a.HasField("g"))
        graphs.extend(g for node in inner.node for a in node.attribute for g in a.graphs)
    return graph


def graph_of(file: Path, model: Any) -> Graph:
    """A parsed model's operators checked, and a batch of one image at once, so a graph of
    unknowable shapes or unbounded cost is refused at load."""
    _check_operators(file, model)
    graph = Graph(file, *_shapes_only(model))
    graph.check(1)
    return graph
