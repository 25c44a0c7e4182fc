"""Binding gin files and `--gin.KEY=VALUE` flags into gin's global config, every mistake as one `UserError`
line naming where it is (`file:line` or the `--gin.` flag), the binding or macro, the offending token and the
fix.

`load` first reads every source with `text2text.gin_sources` (syntax, includes; nothing imported), then
imports the configurables' modules, binds each source on its own so gin's errors (unknown configurable or
parameter, a name a dynamic-registration file never imported, a missing module) name their source, and
checks macros: one a binding uses that nothing binds, one no binding uses (`--gin.TRAIN_STEP=10` ->
"did you mean TRAIN_STEPS?"), and a `%gin.REQUIRED` one left unbound (naming where it was declared).
"""
from __future__ import annotations

import difflib
import importlib.util
import inspect
import os
import pkgutil
import re
import sys
from typing import Callable, Sequence

import gin
from gin import resource_reader

from text2text.errors import UserError
from text2text.gin_sources import Index, Source, read_sources, resolve_gin_file, search_paths

_REQUIRED = "gin.REQUIRED"
# Packages whose modules gin files import with `from PACKAGE import MODULE` (dynamic registration).
_PROJECT_PACKAGES = ("text2text", "tasks")


def _macro_hint(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def check_macros(index: Index) -> None:
    """UserError for a macro a binding uses but nothing binds, or a macro that no binding uses (a misspelt
    name would otherwise be ignored silently)."""
    definitions = index.macro_definitions()
    uses = index.macro_uses()
    for name, statements in uses.items():
        if name == _REQUIRED or name in definitions or _is_constant(name):
            continue
        first = statements[0]
        hint = (" (MODEL comes from a model file such as models/t5_1_1/small.gin)" if name == "MODEL"
                else _macro_hint(name, list(definitions)))
        raise UserError(f"{first.at}: macro %{name} is used but never bound; bind it in a gin "
                        f"file or with --gin.{name}=VALUE{hint}")
    for statement in index.statements:
        name = statement.binding.selector
        if statement.defines_macro and name not in uses:
            used = sorted(uses)
            hint = _macro_hint(name, used) or (f"; macros this run uses: {', '.join(used)}" if used else "")
            raise UserError(f"{statement.at}: no binding uses macro {name}{hint}")


def _is_constant(name: str) -> bool:
    try:
        return bool(gin.config._CONSTANTS.matching_selectors(name))  # pylint: disable=protected-access
    except (KeyError, ValueError):
        return False


def required_message(exc: Exception, index: Index) -> str | None:
    """The line for gin's error about a `%gin.REQUIRED` macro the run never bound, naming where it was declared
    REQUIRED; None if `exc` is another error."""
    found = re.search(r"([A-Za-z_]\w*)/macro\.value set to `%gin\.REQUIRED`", str(exc))
    if not found:
        return None
    name = found.group(1)
    statement = index.macro_definitions().get(name)
    where = f" ({statement.where})" if statement and statement.source.path else ""
    return f"gin macro {name} is %gin.REQUIRED{where} but not bound; pass --gin.{name}=VALUE or bind it in a gin file"


def _registered_names() -> list[str]:
    """Selectors gin knows, with their parameters ('module.fn' and 'module.fn.param')."""
    names = []
    for selector, configurable in gin.config._REGISTRY.items():  # pylint: disable=protected-access
        names.append(selector)
        try:
            params = inspect.signature(configurable.wrapped).parameters
        except (TypeError, ValueError):
            params = {}
        names += [f"{selector}.{p}" for p in params]
    return names


def _closest_names(key: str) -> str:
    """'; closest: ...' for a (possibly short) selector, matched against registered names' tails too."""
    names = _registered_names()
    depth = key.count(".") + 1
    tails = {".".join(n.split(".")[-depth:]): n for n in names}
    close = difflib.get_close_matches(key, list(tails), n=3, cutoff=0.6)
    full = [tails[c] for c in close] or difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    return f"; closest: {', '.join(full)}" if full else ""


def _project_modules() -> list[str]:
    modules = []
    for package in _PROJECT_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec and spec.submodule_search_locations:
            modules += [f"{package}.{m.name}" for m in pkgutil.iter_modules(spec.submodule_search_locations)]
    return modules


def _import_for(name: str) -> str:
    """The import line that provides `name` to a dynamic-registration gin file, e.g. from text2text import config."""
    for module in _project_modules() + sorted(sys.modules):
        if module.rpartition(".")[2] == name and "." in module:
            package, _, leaf = module.rpartition(".")
            return f"from {package} import {leaf}"
    return f"import {name}"


def _gin_location(message: str, source: Source) -> tuple[str, str]:
    """(where, line) from the location gin appends to an error ('In file "F", line N' / 'In bindings string')."""
    lines = message.splitlines()
    for i, text in enumerate(lines):
        found = re.search(r'In file "([^"]+)", line (\d+)', text)
        if found:
            content = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return f"{found.group(1)}:{found.group(2)}", content
        found = re.search(r"In bindings string line (\d+)", text)
        if found:
            content = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return source.where(int(found.group(1))), content
    return (source.flag or source.path or "gin"), ""


def _binding_error(exc: Exception, source: Source) -> UserError:
    """One line for an error gin raised while binding `source`."""
    message = str(exc)
    first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    where, line = _gin_location(message, source)
    prefix = f"{where}: {line}: " if line and not source.flag else f"{where}: "
    not_imported = re.match(r"'([^']+)' was not provided by an import statement", first)
    if not_imported:
        name = not_imported.group(1)
        return UserError(f"{prefix}{name!r} is not imported in this file; add `{_import_for(name)}` after "
                         "`from __gin__ import dynamic_registration`")
    if isinstance(exc, ModuleNotFoundError):
        named = re.search(r"No module named '([^']+)'", first)
        missing = exc.name or (named.group(1) if named else first)
        close = difflib.get_close_matches(missing, _project_modules(), n=2, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return UserError(f"{prefix}no module named {missing!r}{hint}")
    reference = re.search(r"No configurable matching reference '@?([^'(]+)(\(\))?'", first)
    if reference:
        return UserError(f"{prefix}no configurable named {reference.group(1)!r} for "
                         f"@{reference.group(1)}{reference.group(2) or ''}{_closest_names(reference.group(1))}")
    unknown = re.search(r"No configurable matching '([^']+)'", first)
    if unknown:
        return UserError(f"{prefix}no configurable named {unknown.group(1)!r}{_closest_names(unknown.group(1))}")
    parameter = re.search(r"'([^']+)' doesn't have a parameter named '([^']+)'", first)
    if parameter:
        key = f"{parameter.group(1)}.{parameter.group(2)}"
        return UserError(f"{prefix}configurable {parameter.group(1)!r} has no parameter "
                         f"{parameter.group(2)!r}{_closest_names(key)}")
    return UserError(f"{prefix}{first}")


def _silent_package_file_exists(path: str) -> bool:
    """gin's test for a gin file inside a Python package, without its logging ('system_path_file_exists:',
    'Path not found: ...' for every lookup) or its TypeError on namespace packages such as a `runs/` folder."""
    try:
        return os.path.isfile(resource_reader._parse_config_path(path))  # pylint: disable=protected-access
    except (ImportError, ValueError, TypeError):
        return False


def _use_silent_file_readers() -> None:
    readers = gin.config._FILE_READERS  # pylint: disable=protected-access
    readers[:] = [(read, _silent_package_file_exists if exists is resource_reader.system_path_file_exists else exists)
                  for read, exists in readers]


def _bind(sources: Sequence[Source]) -> None:
    for source in sources:
        try:
            if source.path:
                gin.parse_config_file(source.path)
            else:
                gin.parse_config(source.text)
        except (ValueError, KeyError, NameError, ImportError, SyntaxError, OSError) as exc:
            raise _binding_error(exc, source) from exc


def load(files: Sequence[str], bindings: Sequence[tuple[str, str]], extra_search_paths: Sequence[str],
         import_registry: Callable[[], None] = lambda: None) -> Index:
    """Reads, checks and binds gin files and (flag, binding) pairs into the global gin config.

    `import_registry` is called after the syntax checks and before binding (it imports the modules whose
    configurables the bindings name). Returns the index of bindings (for later error messages).
    Raises UserError (one line) for any mistake."""
    paths = search_paths(extra_search_paths)
    resolved = [resolve_gin_file(f, paths) for f in files]
    index = read_sources(resolved, bindings, paths)
    import_registry()
    _use_silent_file_readers()
    known = set(gin.config._LOCATION_PREFIXES)  # pylint: disable=protected-access
    for path in paths:
        if os.path.isdir(path) and path not in known:
            gin.add_config_file_search_path(path)
    _bind([*(Source("", path=p) for p in resolved), *(Source(b, flag=f) for f, b in bindings)])
    check_macros(index)
    try:
        gin.finalize()
    except (ValueError, KeyError) as exc:
        raise UserError(required_message(exc, index) or f"gin: {str(exc).strip().splitlines()[0]}") from exc
    return index
