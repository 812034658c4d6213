"""The tape: differentiable values, how an op records itself, and backward.

Define-by-run, in the DeZero/micrograd style (docs/architecture.md, "Autodiff"):

- Outside a ``Tape`` every op takes and returns plain arrays of the backend's array module: inference
  records nothing and pays only a Python call per op.
- Inside ``with Tape() as tape:`` an op whose inputs include a ``Tensor`` or a trainable ``Variable``
  returns a ``Tensor``: its value, the raw input values, the op's keyword arguments and its VJP.
  Tensors are appended to ``tape.nodes`` in creation order, which is a topological order, so backward
  is one reverse walk of that list.
- ``tape.backward(seeds)`` accumulates gradients; gradients of a value used twice add up. Variables
  are leaves: the tape watches each once and finally writes (first contribution) or adds (later
  ones) its gradient into ``variable.grad`` — a view of the model's flat gradient buffer.

An op is declared with ``@defop`` on its forward (raw arrays in, array out) and ``@<op>.defvjp`` on
its VJP ``vjp(node, g) -> gradient per positional argument``; the VJP reads ``node.inputs``,
``node.value``, ``node.kwargs`` and ``node.needs`` (which positional arguments want a gradient, so
an op can skip work nobody asked for).
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Iterable

import numpy as np

from distnn import backend

_active_tape: "Tape | None" = None
# Set by distnn.ops.symbolic: called when an op receives a symbolic (functional-API) tensor.
_symbolic_types: tuple = ()
_symbolic_call: Callable | None = None


def active_tape() -> "Tape | None":
    return _active_tape


class Tensor:
    """A value recorded on the tape. Behaves like a Keras tensor inside ``call``: operators, indexing,
    ``shape``, ``dtype``, ``ndim``, ``T``."""

    __array_ufunc__ = None  # numpy defers to our reflected operators: ``array @ tensor`` stays on the tape
    __slots__ = ("value", "inputs", "kwargs", "vjp", "parents", "needs", "grad", "grad_owned", "tape",
                 "watched_variable", "writes", "__weakref__")

    def __init__(self, value: Any, tape: "Tape"):
        self.value = value
        self.tape = tape
        self.inputs: tuple = ()
        self.kwargs: dict = {}
        self.vjp: Callable | None = None
        self.parents: tuple = ()  # (position, Tensor) or (position, index in a list argument, Tensor)
        self.needs: tuple = ()
        self.grad: Any = None
        self.grad_owned = False  # whether ``grad`` is an array no one else holds (a fused VJP may overwrite it)
        self.watched_variable: Any = None
        self.writes: tuple = ()  # variables whose gradients this node's VJP writes itself (a fused layer's)

    shape = property(lambda self: tuple(self.value.shape))
    dtype = property(lambda self: self.value.dtype)
    ndim = property(lambda self: self.value.ndim)
    size = property(lambda self: self.value.size)

    def __len__(self) -> int:
        return len(self.value)

    def numpy(self) -> np.ndarray:
        return backend.to_numpy(self.value)

    def __repr__(self) -> str:
        return f"<Tensor shape={self.shape} dtype={self.dtype}>"

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = backend.to_numpy(self.value)
        return array if dtype is None else array.astype(dtype)

    def __bool__(self) -> bool:
        return bool(self.value)

    def __float__(self) -> float:
        return float(self.value)


class Tape:
    """Records the ops run inside ``with Tape():`` and differentiates them.

    Tapes do not nest: a tape records until its ``with`` block ends (``pause()`` stops recording for
    a block, as ``stop_gradient`` does for one value).
    """

    def __init__(self) -> None:
        self.nodes: list[Tensor] = []
        self.watched: dict[int, Tensor] = {}
        self.layer_calls: dict[int, int] = {}  # id(layer) -> calls so far: a shared layer's call slot
        self.touched: set[int] = set()  # id(variable) whose grad this backward has already written
        # Set during a backward with ``on_final`` (docs/architecture.md, "Autodiff"): ``poll_transfers``
        # (with ``on_final_prefix``) advances the buckets in flight, called by fused layers between
        # pieces of a long GEMM; ``report_written``, only while a fused layer node that makes variables
        # final runs its VJP, reports them before the VJP computes dL/dx
        # (``Layer.weight_gradients_written``), and ``report_prefix(variable, elements)`` their
        # leading elements as they are written.
        self.poll_transfers: Callable[[], None] | None = None
        self.report_written: Callable[[], None] | None = None
        self.report_prefix: Callable[[Any, int], None] | None = None
        self._previous: Tape | None = None

    def __enter__(self) -> "Tape":
        global _active_tape
        if _active_tape is not None:
            raise RuntimeError("A Tape is already recording: tapes do not nest")
        self._previous, _active_tape = _active_tape, self
        return self

    def __exit__(self, *exc: Any) -> None:
        global _active_tape
        _active_tape = self._previous

    def watch(self, variable: Any) -> Tensor:
        """The leaf tensor standing for ``variable`` on this tape (one per variable, so uses add up)."""
        leaf = self.watched.get(id(variable))
        if leaf is None:
            leaf = Tensor(variable.value, self)
            leaf.watched_variable = variable
            self.watched[id(variable)] = leaf
        return leaf

    def next_call_slot(self, layer: Any) -> int:
        slot = self.layer_calls.get(id(layer), 0)
        self.layer_calls[id(layer)] = slot + 1
        return slot

    # ------------------------------------------------------------------------------ backward
    def backward(self, seeds: Iterable[tuple[Any, Any]], seeds_owned: bool = False,
                 on_final: Callable[[list], None] | None = None, variables: list | None = None,
                 on_final_prefix: Callable[[Any, int], None] | None = None) -> None:
        """Propagate ``(tensor, dL/dtensor)`` seeds back through the tape into the watched variables.

        ``seeds_owned``: the seed arrays are the caller's to give away (fused layers may overwrite them).
        ``on_final``: called after each node with the ``variables`` whose gradient that node made final
        (usually none), so buckets of the flat gradient can be reduced while backward continues
        (docs/architecture.md, "Gradient buckets and overlap"); a variable no node reaches is zeroed
        and reported first. A fused layer may report its variables from inside its VJP, once they are
        written and before it computes dL/dx (``report_written``).
        ``on_final_prefix``: also report from inside long fused GEMMs, which then run in pieces: the
        leading ``elements`` of a kernel gradient as each block of rows is written
        (``on_final_prefix(variable, elements)``), else an ``on_final`` with no variables, which polls.
        """
        if on_final_prefix is not None and on_final is None:
            raise ValueError("Tape.backward: on_final_prefix needs on_final. Received: on_final=None")
        for tensor, grad in seeds:
            if isinstance(tensor, Tensor) and tensor.tape is self:  # a host seed of a device value is uploaded
                accumulate(tensor, backend.get_array_module(tensor.value).asarray(grad), seeds_owned)
        finals = self._final_writes(variables, on_final) if on_final is not None else None
        self.poll_transfers = functools.partial(on_final, _NONE) if on_final_prefix is not None else None
        for index in range(len(self.nodes) - 1, -1, -1):
            node = self.nodes[index]
            if finals is not None:  # also between nodes that finish nothing: the hook polls transfers
                on_final(self._finish_variables(finals[index]) if index in finals else _NONE)
            grad = node.grad
            if grad is None:
                continue
            node.grad = None  # free it: nothing downstream needs it any more
            if finals is not None and node.writes and index - 1 in finals:
                self._open_early_reports(node, finals, index - 1, on_final, on_final_prefix)
            grads = node.vjp(node, grad)
            self.report_written = self.report_prefix = None
            returned = [g for parent in node.parents for g in [_parent_grad(grads, parent)] if g is not None]
            trusted = getattr(node.vjp, "exclusive_results", False)
            for parent in node.parents:
                g = _parent_grad(grads, parent)
                if g is not None:
                    accumulate(parent[-1], g, trusted or _exclusive(g, grad, returned))
        self.poll_transfers = None
        for leaf in self.watched.values():
            if leaf.grad is not None:
                self.write_variable_grad(leaf.watched_variable, leaf.grad)
                leaf.grad = None
        if finals is not None and -1 in finals:
            on_final(self._finish_variables(finals[-1]))

    def _final_writes(self, variables: list, on_final: Callable[[list], None]) -> dict[int, list]:
        """``{node index: variables whose last gradient write is that node's VJP}`` (backward walks the
        nodes from the end, so the last write is by the lowest-indexed writer: a shared layer's first
        call). Writers are fused layer nodes (into their variables' views) and nodes consuming a
        variable's leaf. Variables no node writes are reported right away."""
        wanted = {id(v): v for v in variables}
        first_writer: dict[int, int] = {}
        for index, node in enumerate(self.nodes):
            for v in node.writes:
                first_writer.setdefault(id(v), index)
            for parent in node.parents:
                watched = parent[-1].watched_variable
                if watched is not None:
                    first_writer.setdefault(id(watched), index)
        finals: dict[int, list] = {}
        unreached = []
        for key, v in wanted.items():
            if key in first_writer:
                finals.setdefault(first_writer[key], []).append(v)
            else:
                unreached.append(v)
        if unreached:
            on_final(self._finish_variables(unreached))
        # The node with the lowest index runs last, but the after-node call fires before its VJP:
        # shift each list to the call made after its writer ran (the next node, or the end).
        return {index - 1: finals[index] for index in finals}

    def _open_early_reports(self, node: Tensor, finals: dict[int, list], key: int,
                            on_final: Callable[[list], None],
                            on_final_prefix: Callable[[Any, int], None] | None) -> None:
        """Let the fused layer of ``node``, about to run its VJP, report the variables it makes final
        from inside it (``report_written``, ``report_prefix``). Not when the VJP gathers into scratch
        (a shared layer's first call, run after its later calls: its gradients land after the VJP)."""
        writes = {id(v) for v in node.writes}
        if writes & self.touched:
            return
        early = [v for v in finals[key] if id(v) in writes]
        if not early:
            return
        self.report_written = functools.partial(self._report_written, early, finals, key, on_final)
        # A prefix is final only if no use by ops (a leaf gradient, added when finishing) remains to add.
        prefixed = {id(v) for v in early if getattr(self.watched.get(id(v)), "grad", None) is None}
        if on_final_prefix is not None and prefixed:
            self.report_prefix = functools.partial(self._report_prefix, prefixed, on_final_prefix)

    @staticmethod
    def _report_prefix(prefixed: set[int], on_final_prefix: Callable[[Any, int], None], variable: Any,
                       elements: int) -> None:
        if id(variable) in prefixed:
            on_final_prefix(variable, elements)

    def _report_written(self, early: list, finals: dict[int, list], key: int, on_final: Callable[[list], None]) -> None:
        """The fused layer's variables ``early`` are written: report them now, while its VJP goes on to
        dL/dx; any other variable final after its node waits for the after-node call."""
        self.report_written = self.report_prefix = None  # once
        written = {id(v) for v in early}
        rest = [v for v in finals.pop(key) if id(v) not in written]
        if rest:
            finals[key] = rest
        self.touched.update(id(v) for v in early if v.grad is not None)
        on_final(self._finish_variables(early))

    def _finish_variables(self, variables: list) -> list:
        """Write each variable's leaf gradient (uses by ops) and zero the gradient of one no node
        wrote this backward, so that ``variables`` hold their final gradients."""
        for v in variables:
            leaf = self.watched.get(id(v))
            if leaf is not None and leaf.grad is not None:
                self.write_variable_grad(v, leaf.grad)
                leaf.grad = None
            if id(v) not in self.touched and v.grad is not None:
                v.grad[...] = 0
                self.touched.add(id(v))
        return variables

    def write_variable_grad(self, variable: Any, grad: Any) -> None:
        """Write (first contribution of this backward) or add ``grad`` into ``variable.grad``."""
        if variable.grad is None:
            return
        if id(variable) in self.touched:
            variable.grad += grad
        else:
            variable.grad[...] = grad
            self.touched.add(id(variable))


_NONE: list = []  # on_final's argument after a node that finished no variable


def _parent_grad(grads: Any, parent: tuple) -> Any:
    return grads[parent[0]] if len(parent) == 2 else grads[parent[0]][parent[1]]


def _exclusive(g: Any, incoming: Any, returned: list) -> bool:
    """Whether an op VJP's result ``g`` is an array no one else holds: it has its own memory (a view,
    such as a reshape or a read-only ``broadcast_to`` of the incoming gradient, does not) and went to
    one parent only (``add`` hands its incoming gradient to both inputs). A VJP whose results are
    always its own (a fused layer's, which writes into its scratch buffers) sets ``exclusive_results``."""
    return g is not incoming and getattr(g, "base", incoming) is None and sum(other is g for other in returned) == 1


def accumulate(tensor: Tensor, grad: Any, owned: bool = False) -> None:
    if tensor.grad is None:
        tensor.grad, tensor.grad_owned = grad, owned
    else:  # out of place: either array may be shared with another tensor
        tensor.grad, tensor.grad_owned = tensor.grad + grad, True


# Arguments that are never tape tensors, variables or symbolic tensors: no further checks needed.
_CONSTANT_TYPES = (np.ndarray, np.generic, int, float, complex, str, type(None))


def _is_variable(value: Any) -> bool:
    return getattr(value, "_is_distnn_variable", False)


def value_of(x: Any) -> Any:
    """The raw array behind a ``Tensor`` or ``Variable`` (anything else unchanged)."""
    if isinstance(x, Tensor):
        return x.value
    if _is_variable(x):
        return x.value
    return x


def _unwrap(arg: Any, tape: Tape | None, position: int, parents: list, index: int | None = None) -> Any:
    if isinstance(arg, Tensor):
        if tape is not None and arg.tape is tape:
            parents.append((position, arg) if index is None else (position, index, arg))
        return arg.value
    if _is_variable(arg):
        if tape is not None and arg.trainable and arg.grad is not None:
            leaf = tape.watch(arg)
            parents.append((position, leaf) if index is None else (position, index, leaf))
        return arg.value
    return arg


def _is_tensor_argument(value: Any) -> bool:
    return isinstance(value, Tensor) or _is_variable(value) or bool(_symbolic_types) and isinstance(
        value, _symbolic_types)


def _has_symbolic(args: tuple) -> bool:
    for arg in args:
        if isinstance(arg, _symbolic_types):
            return True
        if isinstance(arg, (list, tuple)) and any(isinstance(a, _symbolic_types) for a in arg):
            return True
    return False


class Op:
    """A differentiable operation: ``forward(*arrays, **kwargs) -> array`` plus ``vjp(node, g)``."""

    def __init__(self, forward: Callable):
        self.forward = forward
        self.vjp: Callable | None = None
        self.name = forward.__name__
        functools.update_wrapper(self, forward)
        self._positional: list | None = None  # see _bind_keywords

    def defvjp(self, vjp: Callable) -> Callable:
        self.vjp = vjp
        return vjp

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs and any(_is_tensor_argument(v) for v in kwargs.values()):
            args, kwargs = self._bind_keywords(args, kwargs)
        tape = _active_tape
        parents: list = []
        raw = []
        # One pass over the arguments, cheapest checks first: this loop is the tape's per-op cost.
        for position, arg in enumerate(args):
            if isinstance(arg, _CONSTANT_TYPES):
                raw.append(arg)
            elif isinstance(arg, Tensor):
                if tape is not None and arg.tape is tape:
                    parents.append((position, arg))
                raw.append(arg.value)
            elif type(arg) in (list, tuple):
                if _symbolic_types and any(isinstance(a, _symbolic_types) for a in arg):
                    return _symbolic_call(self, args, kwargs)
                if any(isinstance(a, Tensor) or _is_variable(a) for a in arg):
                    # A sequence of tensors (``concatenate``, ``stack``): same container type, raw members.
                    arg = type(arg)(_unwrap(a, tape, position, parents, i) for i, a in enumerate(arg))
                raw.append(arg)
            elif _symbolic_types and isinstance(arg, _symbolic_types):
                return _symbolic_call(self, args, kwargs)
            else:
                raw.append(_unwrap(arg, tape, position, parents))
        value = self.forward(*raw, **kwargs)
        if not parents or self.vjp is None:
            return value
        return record(tape, value, tuple(raw), kwargs, self.vjp, tuple(parents))

    def _bind_keywords(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Move keyword arguments that name positional parameters into ``args``, so that a tensor
        passed by keyword (``batch_normalization(x, m, v, axis=-1, scale=gamma)``) is differentiated."""
        if self._positional is None:  # (name, default) of the parameters passable by position or keyword
            self._positional = [(p.name, p.default) for p in inspect.signature(self.forward).parameters.values()
                                if p.kind == p.POSITIONAL_OR_KEYWORD]
        names = [name for name, _ in self._positional]
        last = max((names.index(key) for key in kwargs if key in names), default=-1)
        kwargs = dict(kwargs)
        args = list(args)
        for name, default in self._positional[len(args):last + 1]:
            if name in kwargs:
                args.append(kwargs.pop(name))
            elif default is inspect.Parameter.empty:
                raise TypeError(f"{self.name}() missing required argument: {name!r}")
            else:
                args.append(default)
        return tuple(args), kwargs

    def __repr__(self) -> str:
        return f"<op {self.name}>"


def defop(forward: Callable) -> Op:
    """Declare a differentiable op from its forward on raw arrays (see the module docstring)."""
    return Op(forward)


def record(tape: Tape, value: Any, inputs: tuple, kwargs: dict, vjp: Callable, parents: tuple,
           writes: tuple = ()) -> Tensor:
    """Append one node to ``tape``; ``parents`` as built by ``Op.__call__``; ``writes``: the variables
    whose gradients ``vjp`` writes itself (a fused layer's), for the final-gradient reports."""
    node = Tensor(value, tape)
    node.inputs, node.kwargs, node.vjp, node.parents, node.writes = inputs, kwargs, vjp, parents, writes
    needs = [False] * len(inputs)
    for parent in parents:
        needs[parent[0]] = True
    node.needs = tuple(needs)
    tape.nodes.append(node)
    return node


def unbroadcast(grad: Any, shape: tuple) -> Any:
    """Sum ``grad`` over the axes that broadcasting added to an input of ``shape``."""
    shape = tuple(shape)
    if tuple(grad.shape) == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


def shape_of(x: Any) -> tuple:
    return tuple(np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)


def array_module(*values: Any) -> Any:
    """numpy or cupy, whichever owns the arrays among ``values`` (anything else, such as Python
    scalars and ``None``, is ignored)."""
    return backend.get_array_module(*values)


def argument(node: Tensor, position: int, name: str, default: Any = None) -> Any:
    """An op argument as its VJP sees it: passed by position, by keyword, or left at its default."""
    if len(node.inputs) > position:
        return node.inputs[position]
    return node.kwargs.get(name, default)


def value_and_grad(fn: Callable, *values: Any, output_gradient: Any = None) -> tuple[Any, list]:
    """``fn(*values)`` and its gradient with respect to each of ``values``, computed on a fresh tape.

    The output is seeded with ``output_gradient`` (default: ones, so a non-scalar output is summed);
    an argument the output does not depend on gets zeros. For tests, gradient checks and custom loops.
    """
    with Tape() as tape:
        leaves = [Tensor(backend.get_array_module(v).asarray(v), tape) for v in values]
        output = fn(*leaves)
    value = value_of(output)
    xp = array_module(value)
    seed = xp.ones_like(value) if output_gradient is None else output_gradient
    tape.backward([(output, seed)])
    return value, [xp.zeros_like(leaf.value) if leaf.grad is None else leaf.grad for leaf in leaves]


def composite(fn: Callable) -> Callable:
    """Declare an op written with other ops (its gradient is theirs). On symbolic tensors it is
    one node of the functional graph, its output shape found by running it on small arrays."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _symbolic_types and (_has_symbolic(args) or _has_symbolic(tuple(kwargs.values()))):
            return _symbolic_call(wrapper, args, kwargs)
        return fn(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------------------- gradient control
def stop_gradient(variable: Any) -> Any:
    """The value of ``variable`` with no gradient flowing back through it."""
    if _symbolic_types and isinstance(variable, _symbolic_types):
        return _symbolic_call(stop_gradient, (variable,), {})
    return value_of(variable)


def custom_gradient(fn: Callable) -> Callable:
    """Keras 3's ``ops.custom_gradient``: ``fn(*args)`` returns ``(result, grad_fn)`` and
    ``grad_fn(upstream)`` (or ``grad_fn(*args, upstream=...)``) returns one gradient per argument.

    The function runs on raw values with recording paused, so it is one fused node on the tape.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _symbolic_types and _has_symbolic(args):
            return _symbolic_call(wrapper, args, kwargs)
        tape = _active_tape
        parents: list = []
        raw = tuple(_unwrap(a, tape, i, parents) for i, a in enumerate(args))
        with pause():
            result, grad_fn = fn(*raw, **kwargs)
        if not parents:
            return result

        def vjp(node: Tensor, g: Any) -> tuple:
            with pause():
                # Keras documents both ``grad(upstream)`` and ``grad(*args, upstream=None)``; asking
                # the signature (not catching TypeError) keeps a TypeError raised inside grad visible.
                grads = grad_fn(upstream=g) if _takes_upstream_keyword(grad_fn) else grad_fn(g)
            grads = grads if isinstance(grads, (list, tuple)) else (grads,)
            return tuple(None if gr is None else value_of(gr) for gr in grads)

        return record(tape, value_of(result), raw, kwargs, vjp, tuple(parents))

    return wrapper


def _takes_upstream_keyword(fn: Callable) -> bool:
    try:
        parameter = inspect.signature(fn).parameters.get("upstream")
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False
    return parameter is not None and parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)


class pause:
    """``with pause():`` — run ops without recording (inside a tape)."""

    def __enter__(self) -> None:
        global _active_tape
        self._tape, _active_tape = _active_tape, None

    def __exit__(self, *exc: Any) -> None:
        global _active_tape
        _active_tape = self._tape


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is something ops accept as a tensor (an array, a tape ``Tensor`` or a ``Variable``)."""
    return isinstance(x, Tensor) or _is_variable(x) or hasattr(x, "__array_interface__") or \
        type(x).__module__.startswith("cupy")
