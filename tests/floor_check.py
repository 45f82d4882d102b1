"""Run by the lowest Python the package claims (see test_python_floor.py): every module of the
toolkit compiles under that Python's grammar, and every standard-library name it imports exists
there. Third-party packages are not needed. Prints one line per problem; exit 1 if any."""
import ast
import importlib
import sys
from pathlib import Path


def problems(file: Path):
    src = file.read_text(encoding="utf-8")
    try:
        tree = compile(src, str(file), "exec", ast.PyCF_ONLY_AST)
    except SyntaxError as e:
        yield f"{file}:{e.lineno}: syntax not accepted by Python {sys.version_info[0]}.{sys.version_info[1]}: {e.msg}"
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            wanted = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            wanted = [(node.module, a.name) for a in node.names]
        else:
            continue
        for module, name in wanted:
            if module.split(".")[0] not in sys.stdlib_module_names:
                continue
            try:
                m = importlib.import_module(module)
            except ImportError:
                yield f"{file}:{node.lineno}: module {module} does not exist in this Python"
                continue
            if name not in (None, "*") and not hasattr(m, name):
                try:
                    importlib.import_module(f"{module}.{name}")
                except ImportError:
                    yield f"{file}:{node.lineno}: {module}.{name} does not exist in this Python"


if __name__ == "__main__":
    found = [p for root in sys.argv[1:] for f in [Path(root)]
             for p in (sorted(f.rglob("*.py")) if f.is_dir() else [f])]
    bad = [line for f in found for line in problems(f)]
    print("\n".join(bad) if bad else f"{len(found)} files ok")
    sys.exit(1 if bad else 0)
