"""Gin files and `--gin.KEY=VALUE` bindings: find them, parse them, and turn every gin mistake into one
`UserError` line naming where it is (`file:line` or the `--gin.` flag), the binding, the offending token and
the fix.

gin's own messages name a Python AST node (`malformed node or string: <ast.Name object at 0x...>`), a
string of joined bindings, or print a traceback; this module parses each source on its own (files in order,
then each flag) so an error always names its source. A first pass reads every source with gin's own parser
(`gin.config_parser.ConfigParser`, no imports needed) to report syntax errors, missing includes and macro
mistakes (a macro used but never bound; a macro no binding uses, e.g. `--gin.TRAIN_STEP=10` for
`TRAIN_STEPS`) before anything heavy is imported.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import io
import os
import pkgutil
import re
import sys
import tokenize
from typing import Any, Sequence

import gin
from gin import config_parser, resource_reader

from text2text.errors import UserError

GIN_CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin_configs")
_REQUIRED = "gin.REQUIRED"
# Packages whose modules gin files import with `from PACKAGE import MODULE` (dynamic registration).
_PROJECT_PACKAGES = ("text2text", "tasks")


@dataclasses.dataclass(frozen=True)
class Source:
    """One gin source: a file (`path`) or one command-line flag (`flag`, e.g. `--gin.TRAIN_STEPS=10`)."""

    text: str
    path: str | None = None
    flag: str | None = None

    def where(self, line: int) -> str:
        return f"{self.path}:{line}" if self.path else str(self.flag)


@dataclasses.dataclass
class Statement:
    """A parsed binding with where it came from and the macros its value names."""

    where: str
    line: str
    source: Source
    binding: config_parser.BindingStatement
    macros: list[str]

    @property
    def at(self) -> str:
        """'FILE:LINE: BINDING' for a file, the flag itself for a --gin flag."""
        return self.where if self.source.flag else f"{self.where}: {self.line}"


@dataclasses.dataclass
class Index:
    """Every binding of a run in parse order (included files expanded in place)."""

    statements: list[Statement] = dataclasses.field(default_factory=list)

    def macro_definitions(self) -> dict[str, Statement]:
        """Macro name -> its last (winning) definition."""
        return {s.binding.selector: s for s in self.statements if _is_macro_definition(s.binding)}

    def macro_uses(self) -> dict[str, list[Statement]]:
        uses: dict[str, list[Statement]] = {}
        for statement in self.statements:
            for name in statement.macros:
                uses.setdefault(name, []).append(statement)
        return uses


def _is_macro_definition(binding: config_parser.BindingStatement) -> bool:
    return not binding.arg_name and not binding.scope and "." not in binding.selector


@dataclasses.dataclass(frozen=True)
class MacroRef:
    """`%NAME` in a parsed value."""

    name: str


@dataclasses.dataclass(frozen=True)
class ConfigurableRef:
    """`@name` or `@name()` in a parsed value."""

    name: str
    evaluate: bool


class _Recorder(config_parser.ParserDelegate):
    """Parser delegate that records the macros a value names; references become MacroRef / ConfigurableRef."""

    def __init__(self):
        self.macros: list[str] = []

    def configurable_reference(self, scoped_configurable_name, evaluate):
        return ConfigurableRef(scoped_configurable_name, evaluate)

    def macro(self, macro_name):
        self.macros.append(macro_name)
        return MacroRef(macro_name)

    def take(self) -> list[str]:
        taken, self.macros = self.macros, []
        return taken


def search_paths(extra: Sequence[str]) -> list[str]:
    """Where gin files are looked up: the given directories, then the current directory and gin_configs/."""
    return [*extra, os.getcwd(), GIN_CONFIGS_DIR]


def _known_gin_files(paths: Sequence[str]) -> list[str]:
    known = []
    for root in paths:
        for dirpath, _, files in os.walk(root):
            known += [os.path.relpath(os.path.join(dirpath, f), root) for f in files if f.endswith(".gin")]
    return known


def _not_found(path: str, paths: Sequence[str]) -> str:
    close = difflib.get_close_matches(path.removeprefix("gin_configs/"), _known_gin_files(paths), n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    return f"gin file {path!r} not found (searched {', '.join(dict.fromkeys(paths))}){hint}"


def resolve_gin_file(path: str, paths: Sequence[str]) -> str:
    """Finds a gin file as given or under a search path; a missing one names the closest files.

    Raises UserError for a missing, unreadable or non-UTF-8 file."""
    candidates = [path] + [os.path.join(d, path) for d in paths if not os.path.isabs(path)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            if not os.access(candidate, os.R_OK):
                raise UserError(f"gin file {candidate!r} is not readable")
            try:
                with open(candidate, encoding="utf-8") as f:
                    f.read()
            except UnicodeDecodeError as exc:
                raise UserError(f"gin file {candidate!r} is not UTF-8 text (byte {exc.start}); expected a gin "
                                "config file") from exc
            except OSError as exc:
                raise UserError(f"gin file {candidate!r} cannot be read: {exc.strerror}") from exc
            return candidate
    raise UserError(_not_found(path, paths))


def _value_text(line: str) -> str:
    """The text after the first '=' of a binding line, without a trailing comment."""
    value = line.partition("=")[2]
    return re.sub(r"\s+#.*$", "", value).strip()


def _quoted_fix(source: Source, key: str, value: str) -> str:
    if source.flag:
        return f"--gin.{key}='\"{value}\"' (the shell removes one level of quotes)"
    return f'{key} = "{value}"'


def _at(source: Source, line_no: int, line: str) -> str:
    """'FILE:LINE: BINDING' for a file, the flag itself for a --gin flag."""
    return source.flag if source.flag else f"{source.path}:{line_no}: {line}"


def _open_bracket_before(text: str, line_no: int) -> int | None:
    """The line of a bracket still open at the start of line `line_no` (1-based), if any."""
    stack = []
    lines = text.splitlines(keepends=True)[:line_no - 1]
    try:
        for token in tokenize.generate_tokens(io.StringIO("".join(lines)).readline):
            if token.type == tokenize.OP and token.string in "([{":
                stack.append(token.start[0])
            elif token.type == tokenize.OP and token.string in ")]}" and stack:
                stack.pop()
    except tokenize.TokenError:
        pass
    return stack[-1] if stack else None


def _syntax_message(source: Source, exc: SyntaxError) -> str:
    """One line for a gin parse error: where, the binding, the offending token and the fix."""
    line_no = exc.lineno or 1
    lines = source.text.splitlines()
    line = (exc.text or "").strip() or (lines[line_no - 1].strip() if line_no <= len(lines) else "")
    at = _at(source, line_no, line)
    message = str(exc.msg).split("\n")[0]
    key = line.partition("=")[0].strip()
    value = _value_text(line)
    token = re.search(r"Failed to parse token '([^']*)'", str(exc.msg))
    opened = _open_bracket_before(source.text, line_no) if source.path else None
    if line.startswith("include") and "=" not in line:
        return f"{at}: include needs a quoted path, e.g. include \"runs/finetune.gin\""
    if opened:
        return f"{source.path}:{opened}: a bracket opened on this line is not closed before line {line_no} ({line})"
    if token:
        name = token.group(1)
        after = value[value.find(name) + len(name):].lstrip() if name in value else ""
        if name.lower() in ("true", "false", "none", "null"):
            fix = {"true": "True", "false": "False"}.get(name.lower(), "None")
            return f"{at}: {name!r} is not a gin value; write {fix} (gin values are Python literals)"
        if after.startswith("("):
            return f"{at}: {name!r} is not a gin value; a configurable is written with '@': @{value}"
        if value.startswith(name) and not value.startswith(("[", "(", "{")):
            return (f"{at}: unquoted string {value!r} (gin cannot parse token {name!r}); quote it: "
                    f"{_quoted_fix(source, key, value)}")
        return f"{at}: gin cannot parse token {name!r}; quote strings, e.g. '{name}'"
    if message.startswith(("Expected newline", "Unable to parse value")):
        if not value:
            return f"{at}: no value after '='"
        if re.fullmatch(r"[\w./:\- ]+", value):
            return f"{at}: unquoted string {value!r}; quote it: {_quoted_fix(source, key, value)}"
        return f"{at}: gin cannot parse the value {value!r}"
    return f"{at}: gin syntax error: {message.rstrip('.')}"


def _unclosed_message(source: Source) -> str:
    if source.flag:
        return f"{source.flag}: unclosed bracket or string in the value"
    return f"{source.path}: unclosed bracket or string (gin reached the end of the file)"


def _parse(source: Source, paths: Sequence[str], index: Index, including: tuple[str, ...] = ()) -> None:
    """Adds the bindings of `source` (and the files it includes) to `index`; UserError on a syntax error or a
    missing include."""
    recorder = _Recorder()
    parser = config_parser.ConfigParser(io.StringIO(source.text), recorder)
    try:
        for statement in parser:
            macros = recorder.take()
            line_no = statement.location.line_num
            line = statement.location.line_content.strip()
            if isinstance(statement, config_parser.IncludeStatement):
                try:
                    path = resolve_gin_file(statement.filename, paths)
                except UserError as exc:
                    raise UserError(f"{source.where(line_no)}: {line}: {exc}") from None
                if os.path.abspath(path) in including:
                    raise UserError(f"{source.where(line_no)}: {line}: includes itself (include cycle)")
                with open(path, encoding="utf-8") as f:
                    _parse(Source(f.read(), path=path), paths, index, (*including, os.path.abspath(path)))
            elif isinstance(statement, config_parser.BindingStatement):
                index.statements.append(Statement(source.where(line_no), line, source, statement, macros))
    except SyntaxError as exc:
        raise UserError(_syntax_message(source, exc)) from None
    except tokenize.TokenError:
        raise UserError(_unclosed_message(source)) from None


def read_sources(files: Sequence[str], bindings: Sequence[tuple[str, str]], paths: Sequence[str]) -> Index:
    """Parses gin files and (flag, binding) pairs without importing anything; UserError on the first mistake."""
    index = Index()
    for path in files:
        with open(path, encoding="utf-8") as f:
            _parse(Source(f.read(), path=path), paths, index, (os.path.abspath(path),))
    for flag, binding in bindings:
        _parse(Source(binding, flag=flag), paths, index)
    return index


def read_bindings(path: str) -> dict[tuple[str, str], Any]:
    """(selector, parameter) -> value of every unscoped binding of one gin file (e.g. a run's MODEL_DIR/config.gin,
    which has no includes), macros resolved; configurable references stay ConfigurableRef. Nothing is imported
    or bound. Raises UserError for a missing file or a syntax error."""
    if not os.path.isfile(path):
        raise UserError(f"gin file {path!r} not found")
    with open(path, encoding="utf-8") as f:
        source = Source(f.read(), path=path)
    index = Index()
    _parse(source, [], index)
    macros = {name: s.binding.value for name, s in index.macro_definitions().items()}

    def resolve(value: Any, depth: int = 0) -> Any:
        if isinstance(value, MacroRef) and value.name in macros and depth < 32:
            return resolve(macros[value.name], depth + 1)
        if isinstance(value, (list, tuple)):
            return type(value)(resolve(v, depth) for v in value)
        if isinstance(value, dict):
            return {k: resolve(v, depth) for k, v in value.items()}
        return value

    return {(s.binding.selector, s.binding.arg_name): resolve(s.binding.value) for s in index.statements
            if not s.binding.scope and s.binding.arg_name}


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
        if _is_macro_definition(statement.binding) and name not in uses:
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


# --- errors raised by gin while binding (unknown names, imports) ---------------------------------------------


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
         import_registry=lambda: None) -> Index:
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
