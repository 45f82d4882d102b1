"""Print the documentation strings of the standard-library modules named on stdin, as JSON.

Run by ``tracing.demo.corpus`` in an isolated interpreter (``python -I``); imports nothing of this
package. Input: ``{"group": [module, ...], ..., "topics": bool}``; output: ``{"group": [[key, doc], ...]}``.
"""
import importlib
import inspect
import json
import sys
import warnings


def defined_here(obj, mname):
    om = getattr(obj, "__module__", None)
    if not isinstance(om, str):
        return False
    short = mname.rsplit(".", 1)[-1]
    return om == mname or om.startswith(mname + ".") or om.lstrip("_") == short


def module_docs(mname):
    try:
        mod = importlib.import_module(mname)
    except Exception:
        return []
    items = []
    if isinstance(mod.__doc__, str):
        items.append((mname, mod.__doc__))
    names = getattr(mod, "__all__", None)
    if not isinstance(names, (list, tuple)):
        names = dir(mod)
    for n in sorted({n for n in names if isinstance(n, str) and not n.startswith("_")}):
        obj = getattr(mod, n, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)) or not defined_here(obj, mname):
            continue
        doc = getattr(obj, "__doc__", None)
        if isinstance(doc, str):
            items.append((mname + "." + n, doc))
        if inspect.isclass(obj):
            members = vars(obj)
            for an in sorted(k for k in members if isinstance(k, str) and (not k.startswith("_") or k == "__init__")):
                a = members[an]
                if isinstance(a, (staticmethod, classmethod)):
                    a = a.__func__
                if not (inspect.isroutine(a) or isinstance(a, property)):
                    continue
                doc = getattr(a, "__doc__", None)
                if isinstance(doc, str):
                    items.append((mname + "." + n + "." + an, doc))
    return items


def topics():
    try:
        from pydoc_data.topics import topics as t
    except Exception:
        return []
    items = []
    for name in sorted(t):
        chunk, i = [], 0
        for para in t[name].split("\n\n"):
            chunk.append(para)
            if sum(len(p) for p in chunk) >= 1000:
                items.append(("pydoc_data.topics.%s#%d" % (name, i), "\n\n".join(chunk)))
                chunk, i = [], i + 1
        if chunk:
            items.append(("pydoc_data.topics.%s#%d" % (name, i), "\n\n".join(chunk)))
    return items


def main():
    warnings.simplefilter("ignore")
    groups = json.loads(sys.stdin.read())
    out = {}
    with_topics = groups.pop("topics")
    for group, mods in groups.items():
        items = []
        for m in mods:
            items.extend(module_docs(m))
        if group == "pretrain" and with_topics:
            items.extend(topics())
        out[group] = items
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
