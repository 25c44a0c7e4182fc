"""Gin files and `--gin.KEY=VALUE` bindings read with gin's own parser (`gin.config_parser.ConfigParser`),
without importing or binding anything: find files and includes, index every binding with where it came from
(`file:line` or the `--gin.` flag) and the macros it uses, and report syntax mistakes as one `UserError` line
naming the binding, the offending token and the fix.

gin's own messages name a Python AST node (`malformed node or string: <ast.Name object at 0x...>`) or a
string of joined bindings; parsing each source on its own (files in order, then each flag) lets an error name
its source. `text2text.gin_load` binds the sources and checks the macros.
"""
from __future__ import annotations

import dataclasses
import difflib
import io
import os
import re
import tokenize
from typing import Any, Sequence

from gin import config_parser

from text2text.errors import UserError

GIN_CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin_configs")


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
    def defines_macro(self) -> bool:
        return _is_macro_definition(self.binding)

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
