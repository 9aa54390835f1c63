"""Build the functions of trusted Lambda layers ourselves (``--trust-code`` only).

Keras 2 saves a Lambda's function as a base64 ``marshal`` dump of its code object, and
``marshal`` is specific to one Python version: Python 3.11 cannot read what 3.5-3.10 wrote ("EOF
read where object expected"), so every such model failed to load. Such a code object is read with
``xdis`` (unmarshal for any Python version), decompiled to source with ``uncompyle6`` and compiled
again by this Python with the original's arguments and free variables.

The function is then made here, not by tf-keras: when it rebuilds a functional model, tf-keras
deserializes each layer without the custom objects, so a Lambda's helpers from the
``--custom-objects`` file were missing from its globals. The globals are tf-keras' usual ones
(its Lambda module's, and the function's module's if loaded) plus every public name of that file.
"""

from __future__ import annotations

import ast
import base64
import binascii
import contextlib
import io
import marshal
import sys
import types

from gencompress.errors import UnsupportedModelError

# Python versions whose code objects uncompyle6 decompiles, most common in Keras 2 files first.
# Python 2 is left out: its source (integer "/", print) does not mean the same under Python 3.
_SOURCE_VERSIONS = ((3, 6), (3, 7), (3, 5), (3, 8))
_FUNCTION_KEYS = (
    ("function", "function_type", "module"),
    ("output_shape", "output_shape_type", "output_shape_module"),
    ("mask", "mask_type", "mask_module"),
)
_CO_VARARGS, _CO_VARKEYWORDS, _CO_GENERATOR_LIKE = 0x04, 0x08, 0x20 | 0x80 | 0x100 | 0x200


def build_lambda_functions(config, custom_objects: dict) -> None:
    """Replace, in place, every Lambda function dump in a Keras 2 config by the function itself
    (``function_type`` "raw", which tf-keras uses as given). Raises ``UnsupportedModelError``
    naming the layer when one cannot be rebuilt."""
    from gencompress.loading.config_check import iter_layer_configs

    for name, cls, cfg in iter_layer_configs(config):
        if cls != "Lambda":
            continue
        for key, type_key, module_key in _FUNCTION_KEYS:
            if cfg.get(type_key) != "lambda" or cfg.get(key) is None:
                continue
            globs = _lambda_globals(cfg.pop(module_key, None), custom_objects)
            cfg[key] = _function(name, cfg[key], globs)
            cfg[type_key] = "raw"


def _lambda_globals(module, custom_objects: dict) -> dict:
    from gencompress.compat.tf_keras import lambda_layer_module

    globs = dict(vars(lambda_layer_module()))
    if module in sys.modules:  # only a module already imported, as tf-keras does
        globs.update(vars(sys.modules[module]))
    globs.update(custom_objects)
    return globs


def _function(layer: str, dump, globs: dict):
    code_b64, defaults, closure = (list(dump) + [None, None])[:3] if isinstance(dump, (list, tuple)) else (dump, None, None)
    raw = _decode(code_b64)
    code = _this_python_code(raw)
    values = list(closure or [])
    if code is None:
        code, values = _rebuilt(layer, raw, values)
    if len(values) != len(code.co_freevars):
        raise UnsupportedModelError(
            f"layer '{layer}' (Lambda): its closure has {len(values)} values for free variables {list(code.co_freevars)}"
        )
    cells = tuple(types.CellType(v) for v in values) or None
    return types.FunctionType(code, globs, code.co_name, tuple(defaults) if defaults else None, cells)


def _this_python_code(raw):
    """The code object if this Python wrote the dump (or one with the same marshal format)."""
    if raw is None:
        return None
    try:
        code = marshal.loads(raw)
    except (ValueError, EOFError, TypeError):
        return None
    return code if isinstance(code, types.CodeType) else None


def _rebuilt(layer: str, raw, closure: list):
    """This Python's code for an older Python's dump, and the closure values in its free-variable order."""
    if raw is None:
        raise UnsupportedModelError(f"layer '{layer}' (Lambda): its function is not a readable code dump")
    try:
        import uncompyle6  # noqa: F401
        import xdis  # noqa: F401
    except ImportError:
        raise UnsupportedModelError(
            f"layer '{layer}' (Lambda): its function was marshalled by an older Python; rebuilding it needs "
            "the optional decompiler (GPL-3.0): pip install 'gencompress[old-lambdas]'"
        ) from None
    errors = []
    for version in _SOURCE_VERSIONS:
        try:
            code, (old_order, new_order) = _recompile(_unmarshal(raw, version), version)
        except _NotThisVersion as exc:
            errors.append(f"{version[0]}.{version[1]}: {exc}")
            continue
        if len(closure) != len(old_order):
            raise UnsupportedModelError(
                f"layer '{layer}' (Lambda): its closure has {len(closure)} values for free variables {list(old_order)}"
            )
        by_name = dict(zip(old_order, closure))
        return code, [by_name[n] for n in new_order]
    raise UnsupportedModelError(
        f"layer '{layer}' (Lambda): its function was marshalled by another Python and could not be rebuilt "
        f"(gencompress decompiles Python 3.5-3.8 bytecode; tried {'; '.join(errors)})"
    )


class _NotThisVersion(Exception):
    pass


def _decode(code_b64):
    if not isinstance(code_b64, str):
        return None
    try:
        return base64.b64decode(code_b64.encode("ascii"), validate=False)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return code_b64.encode("raw_unicode_escape")  # tf-keras' own fallback for non-base64 dumps


def _unmarshal(raw: bytes, version: tuple[int, int]):
    from xdis.magics import magic2int, magics
    from xdis.unmarshal import load_code

    magic = magics.get(f"{version[0]}.{version[1]}")
    if magic is None:
        raise _NotThisVersion("xdis does not know this version")
    try:
        with _quiet():  # xdis prints "Unknown type" on data of another version
            code = load_code(io.BytesIO(raw), magic2int(magic))
    except Exception as exc:  # noqa: BLE001 - a wrong version fails in many ways
        raise _NotThisVersion(f"cannot unmarshal ({type(exc).__name__})") from None
    if not hasattr(code, "co_code"):
        raise _NotThisVersion("not a code object")
    return code


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _recompile(old, version):
    """This Python's code object for the same function, and (old, new) free-variable orders."""
    from uncompyle6.semantics.pysource import code_deparse

    if old.co_flags & _CO_GENERATOR_LIKE:
        raise _NotThisVersion("a generator or coroutine is not a Lambda function")
    out = io.StringIO()
    try:
        with _quiet():
            code_deparse(old, out=out, version=version, compile_mode="exec")
        body = ast.parse(out.getvalue())
    except Exception as exc:  # noqa: BLE001 - uncompyle6 raises assertion and parser errors
        raise _NotThisVersion(f"cannot decompile ({type(exc).__name__})") from None
    params = _parameters(old)
    if len(body.body) == 1 and isinstance(body.body[0], ast.Return) and body.body[0].value is not None:
        inner = f"    _fn = lambda {params}: {ast.unparse(body.body[0].value)}\n"
    else:
        inner = f"    def _fn({params}):\n" + "".join(f"        {line}\n" for line in ast.unparse(body).splitlines() or ["pass"])
    freevars = tuple(old.co_freevars)
    # The free variables become parameters of an enclosing function, so the rebuilt code refers
    # to them as closure cells, like the original; every other name stays a global.
    source = f"def _outer({', '.join(freevars)}):\n{inner}    return _fn\n"
    try:
        outer = compile(source, old.co_filename or "<lambda>", "exec")
    except SyntaxError as exc:
        raise _NotThisVersion(f"decompiled source does not compile ({exc.msg})") from None
    new = _find_code(_find_code(outer, "_outer"), "<lambda>", "_fn")
    if new is None:
        raise _NotThisVersion("decompiled source is not one function")
    new = new.replace(co_name=old.co_name, co_qualname=old.co_name)
    _same_signature(old, new)
    return new, (freevars, tuple(new.co_freevars))


def _parameters(code) -> str:
    n_pos, n_kw = code.co_argcount, code.co_kwonlyargcount
    names = list(code.co_varnames)
    params = names[:n_pos]
    i = n_pos + n_kw
    if code.co_flags & _CO_VARARGS:
        params.append("*" + names[i])
        i += 1
    elif n_kw:
        params.append("*")
    params += names[n_pos : n_pos + n_kw]
    if code.co_flags & _CO_VARKEYWORDS:
        params.append("**" + names[i])
    return ", ".join(params)


def _find_code(code, *names):
    if code is None:
        return None
    for const in code.co_consts:
        if isinstance(const, types.CodeType) and const.co_name in names:
            return const
    return None


def _same_signature(old, new) -> None:
    """A decompilation for the wrong version can still parse; its names then differ."""
    if (old.co_argcount, old.co_kwonlyargcount) != (new.co_argcount, new.co_kwonlyargcount):
        raise _NotThisVersion("the rebuilt function takes other arguments")
    if set(old.co_freevars) != set(new.co_freevars):
        raise _NotThisVersion(f"free variables {sorted(new.co_freevars)} instead of {sorted(old.co_freevars)}")
    if _all_names(old) != _all_names(new):
        raise _NotThisVersion("the rebuilt function uses other names")


def _all_names(code) -> set:
    names = set(code.co_names) | set(code.co_varnames) | set(code.co_freevars)
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            names |= _all_names(const)
    return names - {".0"}  # comprehensions' implicit iterator argument
