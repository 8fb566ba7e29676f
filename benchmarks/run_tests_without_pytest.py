"""Run one pytest-style test file where pytest is not installed (a bare GPU machine).

Supports what tests/test_cuda.py uses: fixtures by argument name (module-scoped, cached; the
conftest's are not loaded), ``mark.parametrize``, ``mark.skipif``, ``skip``, ``importorskip``,
``warns`` and ``raises``. Prints one line per test and exits 1 when any failed.

    PYTHONPATH=src python3 benchmarks/run_tests_without_pytest.py tests/test_cuda.py [--json F]
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import itertools
import json
import re
import sys
import time
import traceback
import types
import warnings


class Skipped(Exception):
    pass


def _shim() -> types.ModuleType:
    """A stand-in ``pytest`` module with the few names the CUDA tests use."""
    pt = types.ModuleType("pytest")

    def fixture(fn=None, **_):
        def mark(f):
            f._fixture = True
            return f
        return mark(fn) if fn is not None else mark

    class MarkDecorator:
        def __init__(self, name, args=(), kwargs=None):
            self.name, self.args, self.kwargs = name, args, kwargs or {}

        def __call__(self, *args, **kwargs):
            if len(args) == 1 and callable(args[0]) and not kwargs and not self.args:
                args[0].__dict__.setdefault("_marks", []).append(self)
                return args[0]
            if self.args:  # decorating with an already configured mark
                args[0].__dict__.setdefault("_marks", []).append(self)
                return args[0]
            return MarkDecorator(self.name, args, kwargs)

    class Mark:
        def __getattr__(self, name):
            return MarkDecorator(name)

    def skip(reason=""):
        raise Skipped(reason)

    def importorskip(name, reason=None, **_):
        try:
            return importlib.import_module(name)
        except ImportError:
            raise Skipped(reason or f"{name} is not installed") from None

    @contextlib.contextmanager
    def warns(category, match=None):
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            yield got
        if not any(issubclass(w.category, category) and
                   (match is None or re.search(match, str(w.message))) for w in got):
            raise AssertionError(f"no {category.__name__} matching {match!r} was raised")

    @contextlib.contextmanager
    def raises(exc, match=None):
        try:
            yield
        except exc as e:
            if match and not re.search(match, str(e)):
                raise AssertionError(f"{e!r} does not match {match!r}") from e
        else:
            raise AssertionError(f"{exc.__name__} was not raised")

    pt.fixture, pt.mark, pt.skip, pt.importorskip = fixture, Mark(), skip, importorskip
    pt.warns, pt.raises = warns, raises
    return pt


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    out = None
    if "--json" in args:
        i = args.index("--json")
        out = args[i + 1]
        del args[i:i + 2]
    sys.modules.setdefault("pytest", _shim())
    spec = importlib.util.spec_from_file_location("tests_under_run", args[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    module_marks = getattr(mod, "pytestmark", [])
    fixtures = {n: f for n, f in vars(mod).items() if getattr(f, "_fixture", False)}
    cache: dict = {}

    def resolve(name):
        if name not in cache:
            f = fixtures[name]
            cache[name] = f(*[resolve(a) for a in inspect.signature(f).parameters])
        return cache[name]

    results = []
    for name, fn in list(vars(mod).items()):
        if not (name.startswith("test_") and callable(fn)):
            continue
        marks = list(getattr(fn, "_marks", []))
        params = [m for m in marks if m.name == "parametrize"]
        cases = [{}]
        for m in params:
            argnames, values = m.args
            keys = [k.strip() for k in argnames.split(",")]
            cases = [dict(c, **dict(zip(keys, v if len(keys) > 1 else (v,))))
                     for c, v in itertools.product(cases, values)]
        for case in cases:
            label = name + (f"[{'-'.join(str(v) for v in case.values())}]" if case else "")
            t0 = time.perf_counter()
            try:
                for m in list(module_marks) + marks:
                    if m.name == "skipif" and m.args[0]:
                        raise Skipped(m.kwargs.get("reason", ""))
                kwargs = {a: case[a] if a in case else resolve(a)
                          for a in inspect.signature(fn).parameters}
                fn(**kwargs)
                status, detail = "passed", ""
            except Skipped as e:
                status, detail = "skipped", str(e)
            except Exception as e:  # noqa: BLE001 (a test runner reports every failure)
                status, detail = "failed", "".join(traceback.format_exception_only(e)).strip()
                traceback.print_exc()
            dt = time.perf_counter() - t0
            results.append({"test": label, "status": status, "seconds": dt, "detail": detail})
            print(f"{status.upper():8s} {label} ({dt:.1f} s) {detail}", flush=True)
    counts = {s: sum(r["status"] == s for r in results) for s in ("passed", "failed", "skipped")}
    print(", ".join(f"{v} {k}" for k, v in counts.items()))
    if out:
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"counts": counts, "tests": results}, f, indent=2)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
