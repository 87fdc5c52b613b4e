"""Every ``# XPU-only`` call of the plugin checked against the XPU call-surface table
(tests/xpu_call_surface.py: signatures read from IPEX's v2.8.10+xpu sources), without an
Intel GPU: the plugin's source is parsed (AST), never run on an XPU.

A call is XPU-only when a ``# XPU-only`` comment is on one of its lines, on the comment
lines right above its statement, or on the header line (``def``/``if``/``else:``) of a
block containing it. Each such call to an IPEX function (``device.ipex()...``,
``device.ipex_ops()...``, ``torch.ops.torch_ipex...``, imported IPEX names) or to
``torch.xpu.*`` must have a table row, and is checked for: positional count, keyword
names, required parameters, no ``*args``/``**kwargs``, argument kinds (tensor / int /
float / bool / str, from the enclosing function's annotations and literals), arguments
named after a different slot (a swap), the values the XPU code implements (``only``),
contiguity the caller owns, and whether an in-place / returning result is used right.
Device-independent facts (dtypes of the metadata the XPU kernels get, the KV layout) are
checked by running the plugin's own code in CPU mode.
"""

from __future__ import annotations

import ast
import inspect
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.xpu_call_surface import TABLE, Row

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO_ROOT / "vllm_xpu_plugin"
MARK = "# XPU-only"
TABLE_FILE = "tests/xpu_call_surface.py"

# Tensor methods whose result is a tensor derived from the receiver (kept: the receiver's
# name, for swap detection).
TENSOR_METHODS = {"contiguous", "flatten", "to", "view", "reshape", "float", "half",
                  "bfloat16", "int", "long", "new_zeros", "new_empty", "clone", "squeeze",
                  "unsqueeze", "transpose", "permute", "detach", "expand", "narrow"}
DERIVED_KEEPS_NAME = {"contiguous", "flatten", "to", "view", "reshape", "float", "half",
                      "bfloat16", "int", "long", "clone", "detach", "squeeze", "unsqueeze"}
COMPATIBLE = {  # table kind -> argument kinds accepted in that slot
    "tensor": {"tensor"},
    "tensor?": {"tensor", "none"},
    "int": {"int"},
    "float": {"float", "int"},
    "bool": {"bool"},
    "str": {"str"},
    "device?": {"device", "int", "str", "none", "tensor"},
    "generator?": {"none", "generator"},
    "int[]": {"list"},
    "any": None,
}


@dataclass
class CallSite:
    path: Path
    lineno: int
    name: str  # canonical dotted name
    node: ast.Call
    function: ast.AST | None  # enclosing def
    statement: ast.stmt

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.lineno}"


# --------------------------------------------------------------------------- source scan


def _marked_lines(source: str) -> dict[int, bool]:
    """line -> True when a real comment (not a string) on it contains the marker;
    comment-only lines are recorded too (value: whether marked)."""
    marked: dict[int, bool] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.string.startswith(MARK):
            marked[tok.start[0]] = True
    return marked


def _comment_only(line: str) -> bool:
    return line.strip().startswith("#")


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: Path, source: str):
        self.path = path
        self.lines = source.splitlines()
        self.marked = _marked_lines(source)
        self.aliases: dict[str, str] = {}  # module-level import aliases -> dotted
        self.module_attrs: dict[str, str] = {}  # attribute holding an IPEX module -> forward
        self.calls: list[CallSite] = []
        self.bare_refs: list[tuple[int, str]] = []
        self._function: list[ast.AST] = []
        self._local: list[dict[str, str]] = [{}]
        self._xpu_depth = 0
        self._statement: ast.stmt | None = None
        self.tree = ast.parse(source)
        self.parents = {child: node for node in ast.walk(self.tree)
                        for child in ast.iter_child_nodes(node)}

    # ---- which statements are XPU-only
    def _marked_span(self, node: ast.AST) -> bool:
        end = getattr(node, "end_lineno", node.lineno)
        return any(self.marked.get(n) for n in range(node.lineno, end + 1))

    def _marked_above(self, stmt: ast.stmt) -> bool:
        first = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])
        n = first - 1
        while n >= 1 and _comment_only(self.lines[n - 1]):
            if self.marked.get(n):
                return True
            n -= 1
        return False

    def _header_marked(self, block: list[ast.stmt]) -> bool:
        """The nearest code line above the block's first statement (its header)."""
        n = block[0].lineno - 1
        while n >= 1 and (not self.lines[n - 1].strip() or _comment_only(self.lines[n - 1])):
            n -= 1
        return n >= 1 and bool(self.marked.get(n))

    def _visit_block(self, block: list[ast.stmt]) -> None:
        if not block:
            return
        header = self._header_marked(block)
        self._xpu_depth += header
        for stmt in block:
            above = self._marked_above(stmt)
            self._xpu_depth += above
            previous, self._statement = self._statement, stmt
            self.visit(stmt)
            self._statement = previous
            self._xpu_depth -= above
        self._xpu_depth -= header

    def generic_visit(self, node: ast.AST) -> None:
        for _field, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                self._visit_block(value)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST):
                        self.visit(item)
            elif isinstance(value, ast.AST):
                self.visit(value)

    # ---- names
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.name.startswith("intel_extension_for_pytorch"):
                self.aliases[a.asname or a.name] = "ipex" + a.name[len(
                    "intel_extension_for_pytorch"):] if a.asname else "ipex"
            elif a.name == "torch" or a.name.startswith("torch."):
                self.aliases[a.asname or "torch"] = a.name if a.asname else "torch"

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        for a in node.names:
            if module.startswith("intel_extension_for_pytorch"):
                self.aliases[a.asname or a.name] = (
                    "ipex" + module[len("intel_extension_for_pytorch"):] + "." + a.name)
            elif module == "torch" and a.name == "xpu":
                self.aliases[a.asname or a.name] = "torch.xpu"

    def visit_FunctionDef(self, node) -> None:
        self._function.append(node)
        self._local.append({})
        self.generic_visit(node)
        self._local.pop()
        self._function.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node: ast.Assign) -> None:
        resolved = self.resolve(node.value)
        if resolved and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            self._local[-1][node.targets[0].id] = resolved
        self.generic_visit(node)

    def resolve(self, node: ast.AST) -> str | None:
        """Canonical dotted name of an IPEX / torch.xpu expression, else None."""
        if isinstance(node, ast.Call) and not node.args and not node.keywords:
            inner = _dotted(node.func)
            if inner in ("device.ipex", "ipex", "vllm_xpu_plugin.device.ipex"):
                return "ipex"
            if inner in ("device.ipex_ops", "ipex_ops"):
                return "torch.ops.torch_ipex"
            return None
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            if base:
                return f"{base}.{node.attr}"
            return self.module_attrs.get(node.attr)
        if isinstance(node, ast.Name):
            for scope in reversed(self._local):
                if node.id in scope:
                    return scope[node.id]
            if node.id in self.aliases:
                return self.aliases[node.id]
            if node.id == "torch":
                return "torch"
        return None

    @staticmethod
    def _interesting(name: str | None) -> bool:
        return bool(name) and (name == "ipex" or name.startswith(
            ("ipex.", "torch.ops.torch_ipex.", "torch.xpu.")))

    def visit_Call(self, node: ast.Call) -> None:
        if self._xpu_depth or self._marked_span(node):
            name = self.resolve(node.func)
            if self._interesting(name):
                self.calls.append(CallSite(self.path, node.lineno, name, node,
                                           self._function[-1] if self._function else None,
                                           self._statement))
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if self._xpu_depth or self._marked_span(node):
            parent = self.parents.get(node)
            outermost = not (isinstance(parent, ast.Attribute) and parent.value is node)
            is_callee = isinstance(parent, ast.Call) and parent.func is node
            name = None if isinstance(node.ctx, ast.Store) else self.resolve(node)
            if outermost and not is_callee and name and name.startswith(
                    ("ipex.", "torch.ops.torch_ipex.")):
                self.bare_refs.append((node.lineno, name))
        self.generic_visit(node)


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def scan(path: Path) -> _Scanner:
    scanner = _Scanner(path, path.read_text())
    # IPEX modules kept in attributes (``self.fusion = ipex...GatedMLPMOE(...)``): calls of
    # ``<anything>.fusion(...)`` in the same file are that module's forward.
    for node in ast.walk(scanner.tree):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Attribute)
                and isinstance(node.value, ast.Call)):
            row = TABLE.get(scanner.resolve(node.value.func) or "")
            if row is not None and row.extra.get("module"):
                scanner.module_attrs[node.targets[0].attr] = row.extra["module"]
    scanner._visit_block(scanner.tree.body)
    return scanner


def plugin_files() -> list[Path]:
    return sorted(p for p in PLUGIN_DIR.rglob("*.py") if "__pycache__" not in p.parts)


# --------------------------------------------------------------------------- call checks


def _annotation_kind(annotation: ast.AST | None) -> str | None:
    if annotation is None:
        return None
    text = ast.unparse(annotation).replace(" ", "")
    if text in ("torch.Tensor", "Tensor"):
        return "tensor"
    if "Tensor" in text and ("Optional" in text or "None" in text):
        return "tensor?"
    return {"int": "int", "float": "float", "bool": "bool", "str": "str"}.get(text)


def _function_params(function: ast.AST | None) -> dict[str, str | None]:
    if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return {}
    a = function.args
    return {arg.arg: _annotation_kind(arg.annotation)
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs]}


def _local_values(function: ast.AST | None, before_line: int) -> dict[str, ast.AST]:
    """Last simple assignment to each name in the function before ``before_line``."""
    values: dict[str, ast.AST] = {}
    if function is None:
        return values
    for node in ast.walk(function):
        if (isinstance(node, ast.Assign) and node.lineno < before_line
                and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            previous = values.get(node.targets[0].id)
            if previous is None or previous.lineno <= node.lineno:
                values[node.targets[0].id] = node.value
    return values


def _kind(node: ast.AST, params: dict, locals_: dict, depth: int = 0) -> str | None:
    if depth > 5:
        return None
    if isinstance(node, ast.Constant):
        v = node.value
        if v is None:
            return "none"
        if isinstance(v, bool):
            return "bool"
        return {int: "int", float: "float", str: "str"}.get(type(v))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _kind(node.operand, params, locals_, depth + 1)
    if isinstance(node, ast.List):
        return "list"
    if isinstance(node, ast.IfExp):
        a = _kind(node.body, params, locals_, depth + 1)
        b = _kind(node.orelse, params, locals_, depth + 1)
        if a == b:
            return a
        if {a, b} == {"tensor", "none"}:
            return "tensor?"
        return None
    if isinstance(node, ast.Name):
        if node.id in params and params[node.id]:
            return params[node.id]
        if node.id in locals_:
            return _kind(locals_[node.id], params, locals_, depth + 1)
        return None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr in TENSOR_METHODS:
            return "tensor"
    return None


def _base_name(node: ast.AST) -> str | None:
    """The variable an argument is (``x``, ``x.contiguous()``, ``x.to(...)``...)."""
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and node.func.attr in DERIVED_KEEPS_NAME:
        node = node.func.value
    return node.id if isinstance(node, ast.Name) else None


def _is_contiguous(node: ast.AST, locals_: dict, depth: int = 0) -> bool:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr == "contiguous"
    if isinstance(node, ast.Name) and node.id in locals_ and depth < 5:
        return _is_contiguous(locals_[node.id], locals_, depth + 1)
    return False


def check_call(site: CallSite, row: Row) -> list[str]:
    problems: list[str] = []
    call = site.node
    say = problems.append
    if any(isinstance(a, ast.Starred) for a in call.args) or any(
            k.arg is None for k in call.keywords):
        say("*args/**kwargs: the call cannot be checked; pass arguments explicitly")
        return problems
    names = [p.name for p in row.params]
    if len(call.args) > len(names):
        say(f"{len(call.args)} positional arguments, {row.name} takes {len(names)}")
        return problems
    bound: dict[str, ast.AST] = dict(zip(names, call.args, strict=False))
    for kw in call.keywords:
        if kw.arg not in names:
            say(f"keyword {kw.arg!r} is not a parameter of {row.name} ({', '.join(names)})")
        elif kw.arg in bound:
            say(f"{kw.arg!r} given both by position and by keyword")
        else:
            bound[kw.arg] = kw.value
    for p in row.params:
        if not p.default and p.name not in bound:
            say(f"required parameter {p.name!r} not passed")
    params = _function_params(site.function)
    locals_ = _local_values(site.function, call.lineno)
    slot_of_name = {}
    for i, p in enumerate(row.params):
        for n in (p.name, *p.aliases):
            slot_of_name.setdefault(n, i)
    for i, p in enumerate(row.params):
        if p.name not in bound:
            continue
        arg = bound[p.name]
        text = ast.unparse(arg)
        kind = _kind(arg, params, locals_)
        accepted = COMPATIBLE[p.kind]
        if accepted is not None and kind is not None:
            kinds = {"tensor", "none"} if kind == "tensor?" else {kind}
            if not kinds <= accepted:
                say(f"argument {p.name!r} = `{text}` is {kind}, {row.name} takes {p.kind}")
        base = _base_name(arg)
        if base is not None and slot_of_name.get(base, i) != i:
            other = row.params[slot_of_name[base]].name
            say(f"argument {p.name!r} = `{text}`: its name says {other!r} (swapped?)")
        if p.only and isinstance(arg, ast.Constant) and arg.value not in p.only:
            say(f"argument {p.name!r} = {arg.value!r}: the XPU code implements only {p.only}")
        if p.only and isinstance(arg, ast.UnaryOp) and isinstance(arg.operand, ast.Constant):
            say(f"argument {p.name!r} = `{text}`: the XPU code implements only {p.only}")
        if p.contiguous and not _is_contiguous(arg, locals_):
            say(f"argument {p.name!r} = `{text}` must be made contiguous (the XPU kernel "
                "TORCH_CHECKs it); pass `.contiguous()`")
    if row.extra.get("out_required"):
        out = bound.get("out")
        if out is None or (isinstance(out, ast.Constant) and out.value is None):
            say("out not passed: IPEX's XPU out=None path builds a float dimension")
    discarded = isinstance(site.statement, ast.Expr) and site.statement.value is call
    if row.result == "returns" and discarded:
        say(f"{row.name} returns a new tensor, and this call discards it")
    if row.result == "in_place":
        for w in row.writes:
            arg = bound.get(w)
            if isinstance(arg, ast.Call):
                say(f"{w!r} is written in place but `{ast.unparse(arg)}` is a temporary: "
                    "the result is lost")
    return problems


def all_call_sites() -> tuple[list[CallSite], list[str]]:
    sites, bare = [], []
    for path in plugin_files():
        scanner = scan(path)
        sites += scanner.calls
        bare += [f"{path.relative_to(REPO_ROOT)}:{line} {name}" for line, name in
                 scanner.bare_refs]
    return sites, bare


def check_all(sites: list[CallSite]) -> list[str]:
    problems = []
    for site in sites:
        row = TABLE.get(site.name)
        if row is None:
            problems.append(
                f"{site.where}: {site.name} is called on an XPU-only line but has no row in "
                f"{TABLE_FILE}: add a row (its signature from IPEX's v2.8.10+xpu sources, "
                "with file:line)")
            continue
        problems += [f"{site.where}: {site.name}: {p}" for p in check_call(site, row)]
    return problems


# --------------------------------------------------------------------------- tests


def test_every_xpu_only_call_matches_the_table():
    sites, bare = all_call_sites()
    names = {s.name for s in sites}
    # The scan finds the calls it must (a scanner that finds nothing would pass anything).
    assert {"ipex.llm.functional.silu_and_mul", "ipex.llm.functional.rms_norm",
            "ipex.llm.functional.add_rms_norm",
            "ipex.llm.functional.rotary_embedding_batched",
            "ipex.llm.modules.PagedAttention.reshape_and_cache_flash",
            "ipex.llm.modules.PagedAttention.flash_attn_varlen_func",
            "torch.xpu.synchronize"} <= names, sorted(names)
    problems = check_all(sites)
    problems += [f"{b}: IPEX referenced on an XPU-only line without being called there; "
                 "call it directly so this test can check the call" for b in bare]
    assert not problems, "\n".join(problems)


def test_cpu_only_calls_are_not_taken_for_xpu_calls():
    """The CPU branches call IPEX too (device.ipex_ops().reshape_and_cache, ...): those
    run in the CPU suite and must not be scanned as XPU calls."""
    sites, _ = all_call_sites()
    assert not [s.where for s in sites if s.name.startswith("torch.ops.torch_ipex.")]
    cpu_calls = [s.where for s in sites if s.name.endswith(".reshape_and_cache")]
    assert not cpu_calls, cpu_calls


def _sites_in(source: str, tmp_path: Path) -> list[CallSite]:
    path = PLUGIN_DIR / "kernels" / "_planted_.py"  # a name under the plugin dir: where
    # REPO_ROOT-relative paths are computed; the file is only read from tmp_path
    planted = tmp_path / "planted.py"
    planted.write_text(source)
    scanner = scan(planted)
    for s in scanner.calls:
        s.path = path
    return scanner.calls


def _plant(tmp_path: Path, file: str, old: str, new: str) -> list[str]:
    source = (PLUGIN_DIR / file).read_text()
    assert source.count(old) == 1, f"plant target not found once in {file}: {old!r}"
    return check_all(_sites_in(source.replace(old, new), tmp_path))


@pytest.mark.parametrize("file, old, new, expected", [
    # key and value swapped in the KV-cache write
    ("kernels/attention.py",
     "reshape_and_cache_flash(\n            key, value, key_cache, value_cache,",
     "reshape_and_cache_flash(\n            value, key, key_cache, value_cache,",
     "its name says 'value' (swapped?)"),
    # the two max lengths after scale (int <-> float slot)
    ("kernels/attention.py", "        max_seqlen_kv,\n        scale,\n        True,",
     "        scale,\n        max_seqlen_kv,\n        True,", "is float"),
    # rotary: is_neox and rotary_dim swapped
    ("kernels/rotary.py", "kernel_table, is_neox, rotary_dim\n",
     "kernel_table, rotary_dim, is_neox\n", "swapped?"),
    # add_rms_norm: x and residual swapped
    ("kernels/norms.py", "add_rms_norm(residual, x, weight,", "add_rms_norm(x, residual, weight,",
     "swapped?"),
    # a keyword IPEX does not have
    ("kernels/attention.py", "        softcap=softcap,\n    )",
     "        soft_cap=softcap,\n    )", "keyword 'soft_cap' is not a parameter"),
    # rms_norm's result dropped
    ("kernels/norms.py", "    return device.ipex().llm.functional.rms_norm(",
     "    device.ipex().llm.functional.rms_norm(", "discards it"),
    # silu_and_mul without out
    ("kernels/activations.py", "silu_and_mul(x, out)  # XPU-only",
     "silu_and_mul(x)  # XPU-only", "out not passed"),
    # the causal flag the XPU kernel does not implement
    ("kernels/attention.py", "        True,  # is_causal", "        False,  # is_causal",
     "implements only (True,)"),
    # the XPU chunked_prefill wants a contiguous query
    ("kernels/attention.py", "    query = query.contiguous()  # XPU-only",
     "    query = query  # XPU-only", "must be made contiguous"),
])
def test_planted_error_fails(tmp_path, file, old, new, expected):
    problems = _plant(tmp_path, file, old, new)
    assert any(expected in p for p in problems), problems


def test_unplanted_copy_passes(tmp_path):
    """The planting machinery itself reports nothing on the real source."""
    for file in ("kernels/attention.py", "kernels/rotary.py", "kernels/norms.py",
                 "kernels/activations.py"):
        assert _plant(tmp_path, file, "from __future__ import annotations",
                      "from __future__ import annotations") == []


def test_call_missing_from_the_table_says_to_add_a_row(tmp_path):
    source = ("from vllm_xpu_plugin import device\n\n\n"
              "def moe(x):\n"
              "    return device.ipex().llm.modules.FusedNewThing(x)  # XPU-only\n")
    problems = check_all(_sites_in(source, tmp_path))
    assert len(problems) == 1 and "add a row" in problems[0], problems


@pytest.mark.parametrize("source, marked", [
    ("def f(x):\n    # XPU-only: why\n    device.ipex().a.b(x)\n", True),
    ("def f(x):  # XPU-only\n    device.ipex().a.b(x)\n", True),
    ("def f(x):\n    if c:\n        pass\n    else:  # XPU-only\n        device.ipex().a.b(x)\n",
     True),
    ("def f(x):\n    device.ipex().a.b(\n        x)  # XPU-only\n", True),
    ("def f(x):\n    device.ipex().a.b(x)\n", False),
    ("def f(x):\n    s = '# XPU-only'\n    device.ipex().a.b(x)\n", False),
])
def test_xpu_only_marker_rules(tmp_path, source, marked):
    source = "from vllm_xpu_plugin import device\n" + source
    assert bool(_sites_in(source, tmp_path)) is marked


def test_bare_ipex_reference_on_an_xpu_line_is_reported(tmp_path):
    path = tmp_path / "bare.py"
    path.write_text("from vllm_xpu_plugin import device\n\n\ndef f(x):\n"
                    "    op = device.ipex().llm.functional.rms_norm  # XPU-only\n"
                    "    return op(x)\n")
    assert scan(path).bare_refs == [(5, "ipex.llm.functional.rms_norm")]


# --------------------------------------------------------------------------- the table


def test_table_rows_cite_the_xpu_release():
    for row in TABLE.values():
        assert row.source, row.name
        if row.name.startswith("ipex."):
            assert row.source[0].startswith("py intel_extension_for_pytorch/"), row.name
            assert any(s.startswith("xpu ") for s in row.source), row.name
        for s in row.source:
            assert s.split()[0] in ("py", "xpu", "op", "fact"), s
            assert ":" in s.split()[1], f"{row.name}: no file:line in {s!r}"
        names = [p.name for p in row.params]
        assert len(set(names)) == len(names), row.name
        defaults = [p.default for p in row.params]
        assert defaults == sorted(defaults), f"{row.name}: a default before a required one"


@pytest.mark.parametrize("name", [n for n, r in TABLE.items() if r.live_signature])
def test_torch_xpu_rows_match_torch_python_sources(name):
    """torch.xpu's Python layer is the same file in the CPU and +xpu wheels of torch 2.8.0."""
    fn = getattr(torch.xpu, name.removeprefix("torch.xpu."))
    fn = getattr(fn, "__wrapped__", fn)
    sig = inspect.signature(fn)
    got = [(p.name, p.default is not inspect.Parameter.empty) for p in sig.parameters.values()]
    assert got == [(p.name, p.default) for p in TABLE[name].params]


# --------------------------------------------------------------------------- facts


def test_xpu_kv_layout_is_what_the_xpu_kernels_read(monkeypatch):
    """reshape_and_cache_flash and chunked_prefill read block_size as key_cache.size(1):
    the plugin's XPU cache is [2, blocks, block_size, kv_heads, head] so that
    kv_cache[0].size(1) is the block size."""
    from vllm_xpu_plugin import device

    monkeypatch.setenv("VLLM_XPU_PLUGIN_DEVICE", "xpu")  # pure functions: no device touched
    for row in TABLE.values():
        if row.kv_layout:
            assert device.kv_cache_layout() == row.kv_layout, row.name
    blocks, block_size, heads, head = 5, 64, 3, 128
    key_cache = torch.empty(device.kv_cache_shape(blocks, block_size, heads, head))[0]
    assert key_cache.size(1) == block_size and key_cache.size(2) == heads


def test_attention_metadata_dtypes_are_what_the_xpu_kernels_accept():
    """The metadata builder is device-independent: the tensors it makes in CPU mode are the
    ones the XPU kernels get (slot_mapping -> reshape_and_cache_flash; query_start_loc,
    seq_start_loc, block_table -> flash_attn_varlen_func)."""
    from tests.test_attention import make_batch, run_builder

    metadata = run_builder(make_batch())
    write = TABLE["ipex.llm.modules.PagedAttention.reshape_and_cache_flash"]
    attend = TABLE["ipex.llm.modules.PagedAttention.flash_attn_varlen_func"]
    checks = [(metadata.slot_mapping, write.param("slot_mapping")),
              (metadata.query_start_loc, attend.param("cu_seqlens_q")),
              (metadata.seq_start_loc, attend.param("cu_seqlens_kv")),
              (metadata.block_table, attend.param("block_tables"))]
    for tensor, param in checks:
        assert str(tensor.dtype) in param.dtypes, (param.name, tensor.dtype, param.dtypes)
        assert tensor.is_contiguous(), param.name


def test_xpu_rotary_table_is_the_cache_itself(monkeypatch):
    """The XPU kernel reads cos_sin_cache as query's dtype (data_ptr<scalar_t>); the ops
    layer matches the cache's dtype to the query, and the XPU kernel table must then be that
    cache unchanged (no fp32 CPU-layout table)."""
    from vllm_xpu_plugin.kernels import rotary

    monkeypatch.setenv("VLLM_XPU_PLUGIN_DEVICE", "xpu")
    cache = torch.randn(16, 64, dtype=torch.bfloat16)
    assert rotary.rotary_kernel_table(cache, 64) is cache
