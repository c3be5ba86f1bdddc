"""The layout holds: no import cycle among the package's modules (function-level imports included), the core
imports nothing of the ORM or the Django side (it reads Django settings through one bridge), and no class or module
outgrows its limit."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = 'django_rq_scheduled'
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
BRIDGE = f'{PACKAGE}.core._django'
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {
    module_name(path): path for path in sorted(ROOT.rglob('*.py')) if 'migrations' not in path.relative_to(ROOT).parts
}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node, except those under ``if TYPE_CHECKING:`` (annotations only: never imported at run time)."""
    found: list[ast.AST] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        found.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) in ('TYPE_CHECKING', 'typing.TYPE_CHECKING'):
                pending.extend(child.orelse)
                continue
            pending.append(child)
    return found


def imports_of(name: str) -> set[str]:
    """The modules ``name`` imports at run time, at any level of its code: absolute names."""
    path = MODULES[name]
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    imported: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.rsplit('.', node.level - 1)[0] if node.level > 1 else package
                base = f'{anchor}.{base}' if base else anchor
            imported.add(base)
            imported.update(f'{base}.{alias.name}' for alias in node.names if f'{base}.{alias.name}' in MODULES)
    return imported


def internal_graph() -> dict[str, set[str]]:
    return {name: {other for other in imports_of(name) if other in MODULES and other != name} for name in MODULES}


def test_no_import_cycle_among_the_packages_modules():
    graph = internal_graph()
    # A package's __init__ is imported with each of its modules: importing it is no edge of a cycle by itself.
    graph = {name: {other for other in edges if not name.startswith(f'{other}.')} for name, edges in graph.items()}
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 'open'
        path.append(name)
        for other in sorted(graph[name]):
            if state.get(other) == 'open':
                cycle = [*path[path.index(other) :], other]
                pytest.fail('import cycle: ' + ' -> '.join(cycle))
            if other not in state:
                visit(other)
        path.pop()
        state[name] = 'done'

    for name in sorted(graph):
        if name not in state:
            visit(name)


CORE = sorted(name for name in MODULES if name.startswith(f'{PACKAGE}.core'))


@pytest.mark.parametrize('name', CORE)
def test_the_core_knows_redis_and_rq_never_the_orm(name):
    imported = imports_of(name)
    assert not {i for i in imported if i == 'django.db' or i.startswith('django.db.')}, 'the core never uses the ORM'
    outside = {i for i in imported if i.startswith(PACKAGE) and not i.startswith(f'{PACKAGE}.core')}
    django = {i for i in imported if i in ('django', 'django_rq') or i.startswith(('django.', 'django_rq.'))}
    if name == BRIDGE:
        assert outside <= {f'{PACKAGE}.conf'}, outside
        assert django <= {'django.conf', 'django_rq'}, django
    else:
        assert not outside, f'{name} imports {outside}: the core reads Django only through {BRIDGE}'
        assert not django, f'{name} imports {django}: the core reads Django only through {BRIDGE}'


@pytest.mark.parametrize('name', sorted(MODULES))
def test_no_module_or_class_is_too_long(name):
    source = MODULES[name].read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f'{name}: more than {MAX_MODULE_LINES} lines'
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= MAX_CLASS_LINES, f'{name}.{node.name}: {length} lines'


def test_the_architecture_test_sees_the_package():
    """Guards the tests above against vacuity: they read real modules and real imports."""
    graph = internal_graph()
    assert f'{PACKAGE}.core.scheduler' in graph[f'{PACKAGE}.servers']
    assert f'{PACKAGE}.servers' in graph[f'{PACKAGE}.models']  # the function-level import of run_now
    assert len(CORE) >= 15
