"""Custom code checks: ``auto_map`` references, a static scan of every ``.py``, and (only with
``--trust-remote-code``) an import of the custom tokenizer in a separate, time-limited process.

Nothing from the folder is imported into this process, ever: ``auto_map`` targets are checked by
parsing the source with :mod:`ast`, and the scan reads the syntax tree. With
``--trust-remote-code`` the tokenizer is instantiated by a child Python whose working directory
is a fresh temporary folder and whose ``sys.path`` alone gets the model folder.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from ..contents import FolderContents
from ..environment import (
    CAP_SOURCE,
    REMOTE_CODE_TIMEOUT_VAR,
    file_tail,
    reference_memory,
    remote_code_timeout,
    run_python,
)
from ..findings import Finding, finding, register
from ..fsutil import is_safe_relative_name, link_problem, open_regular
from ..tensors import FormatError

# --- codes (HFC801..HFC819) ----------------------------------------------------------------------
register("HFC801", "error", "auto_map file missing",
         "auto_map names a module of the folder that does not exist; from_pretrained(trust_remote_code=True) "
         "fails to find the class.",
         "Upload the .py file, or correct the module name in auto_map.",
         "config.json: auto_map AutoModelForCausalLM names modeling_x.XForCausalLM but modeling_x.py is not "
         "in the folder")
register("HFC802", "error", "auto_map class missing",
         "The module auto_map names exists but defines no such class; loading fails with AttributeError.",
         "Correct the class name in auto_map, or define the class in the module.",
         "tokenizer_config.json: auto_map AutoTokenizer names tokenization_x.XTokenizer but tokenization_x.py "
         "defines no XTokenizer")
register("HFC803", "error", "custom code does not parse",
         "A Python file of the folder has a syntax error; importing it with trust_remote_code fails.",
         "Fix the syntax error at the line given.",
         "modeling_x.py does not parse: invalid syntax at line 12")
register("HFC804", "warning", "custom code reaches outside",
         "Custom code runs with the user's rights when loaded with trust_remote_code=True; this file imports "
         "or calls something that starts processes, opens network connections, evaluates strings as code or "
         "touches files outside the folder.",
         "Review the named line before loading with trust_remote_code=True; remove it if it is not needed.",
         "tokenization_x.py line 3: calls os.system (runs a shell command); review it before trusting this code")
register("HFC805", "error", "custom tokenizer fails",
         "With --trust-remote-code the custom tokenizer was imported and instantiated in a separate process, "
         "and that failed; AutoTokenizer.from_pretrained(trust_remote_code=True) fails the same way.",
         "Fix the error shown (a missing dependency, a wrong file name, a bug in the tokenizer class).",
         "custom tokenizer failed to load: ModuleNotFoundError: No module named 'tiktoken'")
register("HFC806", "info", "custom tokenizer not tried",
         "The custom tokenizer could not be tried with --trust-remote-code (transformers is not installed), "
         "so only the static checks ran.",
         "Install transformers to have the tokenizer instantiated in a subprocess.",
         "custom tokenizer not tried: transformers is not installed")
register("HFC807", "info", "custom code not imported",
         "The folder carries custom code (auto_map); loading it needs trust_remote_code=True, which runs "
         "that code. hfconv only read it.",
         "Review the code; run hfconv validate --trust-remote-code to have the custom tokenizer instantiated "
         "in a subprocess.",
         "config.json: auto_map uses custom code (modeling_x.py); it was read, not imported (loading needs "
         "trust_remote_code=True)")
register("HFC808", "error", "auto_map reference malformed",
         "An auto_map entry is not of the form 'module.ClassName' (or 'org/repo--module.ClassName'), or "
         "names a module outside the folder; transformers fails to resolve it.",
         "Write the entry as 'module_file_without_py.ClassName'.",
         "config.json: auto_map AutoConfig is 'configs.x.XConfig', which is not 'module.ClassName'")
register("HFC809", "info", "auto_map code in another repo",
         "The auto_map entry loads its code from another Hub repository, which hfconv cannot check offline.",
         "Review that repository's code (or copy the module into this folder).",
         "config.json: auto_map AutoModel loads code from another repository ('org/repo--modeling.X')")
register("HFC810", "error", "custom tokenizer timed out",
         "Importing and instantiating the custom tokenizer in a subprocess did not finish in time (it hangs, "
         "waits on the network, or does heavy work at import).",
         "Find what the tokenizer does at import or in __init__ and make it finish quickly offline.",
         "custom tokenizer did not load within 120 s; the subprocess was stopped")
register("HFC811", "error", "custom model code over its limits",
         "With --trust-remote-code the folder's own configuration or modeling code was imported in a separate "
         "process to build the reference model, and it ran past the time limit or the memory limit (it hangs, "
         "waits on the network, or does heavy work at import); from_pretrained(trust_remote_code=True) hangs or "
         "runs out of memory the same way.",
         "Find what the code does at import or in __init__ and make it finish quickly offline; raise the limit "
         "with HFCONV_REMOTE_CODE_TIMEOUT (seconds) or HFCONV_REFERENCE_MEMORY_MB if the work is genuine.",
         "configuration_x.py: importing the folder's own code (--trust-remote-code) and building the reference "
         "model did not finish within 120 s (the time cap; the subprocess was stopped)")
register("HFC812", "warning", "custom code too large to scan",
         "A Python file of the folder holds more tokens than hfconv parses (a parse tree costs hundreds of bytes "
         "per token, so a few megabytes of tiny tuples take gigabytes): it was not scanned for risky calls, and "
         "its auto_map classes were not checked.",
         "Review the file by hand before trusting it; real modeling files hold well under 100,000 tokens.",
         "modeling_x.py holds over 300000 tokens, more than hfconv parses per file; it was not scanned")

MAX_SOURCE_BYTES = 5_000_000
MAX_SOURCE_TOKENS = 300_000
"""Most tokens of one .py file that are parsed (transformers' largest modeling file has about 35,000;
300,000 tiny tuples take about 150 MB as a parse tree)."""
MAX_TOTAL_SOURCE_TOKENS = 1_000_000
"""Most tokens parsed over all the folder's .py files."""
_TOKEN = re.compile(r"[A-Za-z_0-9]+|[^\sA-Za-z_0-9]")
"""An upper bound on Python tokens (and so on parse-tree nodes): runs of word characters and single
other characters, counted without building anything."""
MAX_SCAN_FINDINGS_PER_FILE = 20
TRUST_TIMEOUT_S = 120.0
"""How long the --trust-remote-code subprocess may take (imports included); the environment variable
HFCONV_REMOTE_CODE_TIMEOUT (seconds) overrides it."""
_RESULT_PREFIX = "HFCONV-RESULT:"

# Modules whose import alone means reaching outside: network, processes, native code.
RISKY_MODULES = {
    "subprocess": "starts processes",
    "pty": "starts processes",
    "socket": "opens network connections",
    "requests": "reaches the network",
    "urllib.request": "reaches the network",
    "urllib3": "reaches the network",
    "http.client": "reaches the network",
    "httpx": "reaches the network",
    "aiohttp": "reaches the network",
    "ftplib": "reaches the network",
    "smtplib": "reaches the network",
    "telnetlib": "reaches the network",
    "paramiko": "reaches the network",
    "webbrowser": "opens a browser",
    "ctypes": "loads native code",
}
# module attribute -> why (calls, and names imported with `from module import name`)
RISKY_CALLS = {
    "os.system": "runs a shell command",
    "os.popen": "runs a shell command",
    "os.fork": "starts processes",
    "os.forkpty": "starts processes",
    "os.kill": "signals processes",
    "os.remove": "deletes files",
    "os.unlink": "deletes files",
    "os.rmdir": "deletes folders",
    "os.removedirs": "deletes folders",
    "shutil.rmtree": "deletes folders",
    "importlib.import_module": "imports modules by name at run time",
    "urllib.request.urlopen": "reaches the network",
    "urllib.request.urlretrieve": "reaches the network",
}
RISKY_PREFIX_CALLS = {"os.exec": "replaces the process", "os.spawn": "starts processes",
                      "os.posix_spawn": "starts processes"}
PATH_CALLS = frozenset({"open", "builtins.open", "io.open", "pathlib.Path", "pathlib.PurePath",
                        "os.path.expanduser", "os.open", "os.listdir", "os.scandir", "os.walk"})
"""Calls whose first argument is a path: a literal absolute, home or ``..`` path is reported."""
RISKY_BUILTINS = {
    "eval": "evaluates a string as code",
    "exec": "executes a string as code",
    "__import__": "imports modules by name at run time",
}


# --- auto_map ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AutoMapEntry:
    """One class reference from an auto_map."""

    file: str
    """JSON file holding the auto_map."""
    auto_class: str
    """``AutoConfig``, ``AutoTokenizer``, ..."""
    reference: str
    """``module.ClassName`` or ``org/repo--module.ClassName``."""


def auto_map_entries(contents: FolderContents) -> list[AutoMapEntry]:
    """Every class reference of every auto_map in the folder's JSON files."""
    entries: list[AutoMapEntry] = []
    for file, data in contents.json.items():
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if isinstance(auto_map, list):  # old tokenizer_config format: [slow, fast]
            auto_map = {"AutoTokenizer": auto_map}
        if not isinstance(auto_map, dict):
            continue
        for auto_class, value in auto_map.items():
            values = value if isinstance(value, list) else [value]
            for reference in values:
                if isinstance(reference, str) and reference:
                    entries.append(AutoMapEntry(file, str(auto_class), reference))
    return entries


def _defined_names(tree: ast.Module) -> set[str] | None:
    """Names bound at module level (classes, assignments, imports); None when a star import hides them."""
    names: set[str] = set()
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.If, ast.Try, ast.With)) or type(node).__name__ == "TryStar":
            for field in ("body", "orelse", "finalbody"):
                stack.extend(getattr(node, field, []) or [])
            for handler in getattr(node, "handlers", []) or []:
                stack.extend(handler.body)
    return names


def _read_source(contents: FolderContents, name: str) -> str:
    """The text of a .py file of the folder (regular, inside, bounded). Raises FormatError."""
    folder = contents.folder
    if not folder.contains(name):
        raise FormatError("HFC006", f"{link_problem(folder.path(name))}; it was not read")
    with open_regular(folder.path(name)) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_SOURCE_BYTES:
            raise FormatError("HFC803", f"is {size} bytes, over the {MAX_SOURCE_BYTES}-byte limit for source files")
        data = handle.read(MAX_SOURCE_BYTES + 1)
    return data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class ParsedModule:
    """What the checks need from one parsed .py file (its syntax tree is dropped right away)."""

    names: set[str] | None
    """Names bound at module level; None when a star import hides them."""
    uses: list[RiskyUse]


def count_tokens(source: str, limit: int) -> int:
    """An upper bound on the tokens of ``source``, counted up to ``limit + 1`` at most (a regular
    expression pass, no objects per token)."""
    return _TOKEN.subn("", source, count=limit + 1)[1]


def _parse_all(contents: FolderContents) -> tuple[dict[str, ParsedModule], list[Finding]]:
    """Parse every .py of the folder (never import); syntax errors and files over the token caps
    become findings. Each tree is scanned and dropped before the next file is parsed."""
    parsed: dict[str, ParsedModule] = {}
    findings: list[Finding] = []
    budget = MAX_TOTAL_SOURCE_TOKENS
    for name in contents.folder.python_files:
        if name in contents.folder.special_files:
            continue
        try:
            source = _read_source(contents, name)
            limit = min(MAX_SOURCE_TOKENS, budget)
            tokens = count_tokens(source, limit)
            if tokens > limit:
                cap = (f"more than hfconv parses per file ({MAX_SOURCE_TOKENS})" if limit == MAX_SOURCE_TOKENS else
                       f"more than is left of the {MAX_TOTAL_SOURCE_TOKENS} tokens hfconv parses per folder")
                findings.append(finding("HFC812", f"{name} holds over {limit} tokens, {cap}; it was not parsed or "
                                        "scanned for risky calls, so review it by hand before trusting it",
                                        file=name))
                continue
            budget -= tokens
            tree = ast.parse(source, filename=name)
            del source
            parsed[name] = ParsedModule(_defined_names(tree), scan_source(tree))
            del tree
        except FormatError as exc:
            findings.append(finding(exc.code, f"{name} {exc.message}", file=name))
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            lineno = getattr(exc, "lineno", None)
            where = f" at line {lineno}" if lineno else ""
            reason = getattr(exc, "msg", None) or type(exc).__name__
            findings.append(finding("HFC803", f"{name} does not parse: {reason}{where}; importing it with "
                                    "trust_remote_code fails", file=name))
    return parsed, findings


def _check_auto_map(contents: FolderContents, parsed: dict[str, ParsedModule]) -> Iterator[Finding]:
    local_modules: dict[str, str] = {}
    for entry in auto_map_entries(contents):
        label = f"{entry.file}: auto_map {entry.auto_class}"
        reference = entry.reference
        if "--" in reference:
            parts = reference.split("--")
            if len(parts) != 2 or not parts[0] or not parts[1]:
                yield finding("HFC808", f"{label} is {reference!r}, which is not 'org/repo--module.ClassName'",
                              file=entry.file, tensor="$.auto_map")
            else:
                yield finding("HFC809", f"{label} loads code from another repository ({reference!r}); hfconv "
                              "cannot check it offline, so review that repository's code", file=entry.file,
                              tensor="$.auto_map")
            continue
        pieces = reference.split(".")
        # transformers loads the module by file path, so any file name works; the class must be a name.
        if len(pieces) != 2 or not pieces[0] or not pieces[1].isidentifier():
            yield finding("HFC808", f"{label} is {reference!r}, which is not 'module.ClassName' (transformers "
                          "splits it at its single dot)", file=entry.file, tensor="$.auto_map")
            continue
        module, class_name = pieces
        module_file = module + ".py"
        if not is_safe_relative_name(module_file):
            yield finding("HFC808", f"{label} names module {module!r}, which is not a file name inside the folder",
                          file=entry.file, tensor="$.auto_map")
            continue
        if not contents.folder.has(module_file):
            yield finding("HFC801", f"{label} names {reference} but {module_file} is not in the folder; upload it "
                          "or correct auto_map", file=entry.file, tensor="$.auto_map")
            continue
        local_modules.setdefault(module_file, entry.file)
        parsed_module = parsed.get(module_file)
        if parsed_module is None:
            continue  # unreadable, too large or does not parse: reported by the parse step
        names = parsed_module.names
        if names is not None and class_name not in names:
            yield finding("HFC802", f"{label} names {reference} but {module_file} defines no {class_name}; correct "
                          "the class name in auto_map", file=entry.file, tensor="$.auto_map")
    trusted = contents.options.trust_remote_code
    for module_file, file in local_modules.items():
        how = ("it is imported only in separate, time-limited subprocesses (trust_remote_code=True)" if trusted
               else "it was read, not imported (loading it needs trust_remote_code=True)")
        yield finding("HFC807", f"{file}: auto_map uses custom code ({module_file}); {how}", file=module_file)


# --- static scan ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RiskyUse:
    """One import or call of the custom code that reaches outside the folder."""

    line: int
    what: str
    """``import subprocess``, ``os.system``, ..."""
    why: str


def _dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _module_risk(module: str) -> str | None:
    for risky, why in RISKY_MODULES.items():
        if module == risky or module.startswith(risky + "."):
            return why
    return None


def _call_risk(dotted: str) -> str | None:
    if dotted in RISKY_CALLS:
        return RISKY_CALLS[dotted]
    for prefix, why in RISKY_PREFIX_CALLS.items():
        if dotted.startswith(prefix) and "." not in dotted[len(prefix):]:
            return why
    module = dotted.rsplit(".", 1)[0] if "." in dotted else ""
    return _module_risk(module) if module else None


def scan_source(tree: ast.Module) -> list[RiskyUse]:
    """Imports and calls in a parsed module that reach the network, processes, code evaluation or
    files outside the folder, with their lines (sorted, one per line and target)."""
    aliases: dict[str, str] = {}  # local name -> dotted module/attribute it stands for
    uses: dict[tuple[int, str], RiskyUse] = {}

    def add(line: int, what: str, why: str) -> None:
        uses.setdefault((line, what), RiskyUse(line, what, why))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                # `import a.b` binds `a`; `import a.b as c` binds `c` to a.b
                top = alias.name.split(".")[0]
                aliases[alias.asname or top] = alias.name if alias.asname else top
                why = _module_risk(alias.name)
                if why:
                    add(node.lineno, f"import {alias.name}", why)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            why = _module_risk(node.module)
            if why:
                add(node.lineno, f"from {node.module} import ...", why)
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                aliases[alias.asname or alias.name] = full
                call_why = _call_risk(full) if not why else None
                if call_why:
                    add(node.lineno, f"from {node.module} import {alias.name}", call_why)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in RISKY_BUILTINS and func.id not in aliases:
            add(node.lineno, func.id, RISKY_BUILTINS[func.id])
            continue
        dotted = _dotted(func)
        if dotted is None:
            continue
        head, _, rest = dotted.partition(".")
        resolved = aliases.get(head, head) + (f".{rest}" if rest else "")
        if resolved in ("builtins.eval", "builtins.exec", "builtins.__import__"):
            add(node.lineno, resolved, RISKY_BUILTINS[resolved.split(".")[1]])
            continue
        why = _call_risk(resolved)
        if why:
            add(node.lineno, resolved, why)
        elif resolved in PATH_CALLS and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and not is_safe_relative_name(
                    first.value.replace("\\", "/")):
                add(node.lineno, f"{resolved.rsplit('.', 1)[-1]}({first.value[:40]!r})",
                    "uses a path outside the model folder")
    return sorted(uses.values(), key=lambda u: (u.line, u.what))


def _check_scan(parsed: dict[str, ParsedModule]) -> Iterator[Finding]:
    for name, module in parsed.items():
        uses = module.uses
        for use in uses[:MAX_SCAN_FINDINGS_PER_FILE]:
            verb = use.what if use.what.startswith(("import ", "from ")) or "(" in use.what else f"calls {use.what}"
            yield finding("HFC804", f"{name} line {use.line}: {verb} ({use.why}); review it before trusting this "
                          "code", file=name)
        if len(uses) > MAX_SCAN_FINDINGS_PER_FILE:
            yield finding("HFC804", f"{name}: {len(uses) - MAX_SCAN_FINDINGS_PER_FILE} more imports or calls that "
                          "reach outside the folder; review the whole file before trusting it", file=name)


# --- --trust-remote-code -------------------------------------------------------------------------
_CHILD = r"""
import json, sys, traceback
PREFIX = "HFCONV-RESULT:"
def report(**fields):
    sys.stdout.write("\n" + PREFIX + json.dumps(fields) + "\n")
    sys.stdout.flush()
folder = sys.argv[1]
try:
    import transformers
    from transformers import AutoTokenizer
except Exception as exc:
    report(status="skipped", reason="transformers is not installed (%s)" % type(exc).__name__)
    sys.exit(0)
sys.path.insert(0, folder)
if len(sys.argv) > 2 and "_hfconv_cap" in globals():
    _hfconv_cap(int(sys.argv[2]))  # the address space: what the imports mapped, plus a margin
try:
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    report(status="ok", tokenizer_class=type(tok).__name__, size=len(tok))
except BaseException as exc:
    last = (str(exc).strip().splitlines() or [""])[-1]
    report(status="error", error="%s: %s" % (type(exc).__name__, last[:300]))
"""


@dataclass(frozen=True)
class TrustResult:
    """What the subprocess said: status ``ok``, ``error``, ``skipped`` or ``timeout``."""

    status: str
    detail: str = ""


def load_tokenizer_in_subprocess(folder: str, timeout: float | None = None) -> TrustResult:
    """Instantiate the folder's tokenizer with trust_remote_code=True in a separate Python process.

    The child runs offline, with a fresh temporary working directory and Hub/module caches inside
    it (:func:`hfconv.environment.run_python`), an address-space cap beyond its own imports, and
    only its own ``sys.path`` gets the model folder. Nothing is imported into this process.

    Args:
        folder: the model folder.
        timeout: seconds before the child and its process group are killed (default
            ``TRUST_TIMEOUT_S``).

    Returns:
        The child's verdict.
    """
    import tempfile  # (and shutil): only where a subprocess runs

    timeout = remote_code_timeout(TRUST_TIMEOUT_S) if timeout is None else timeout
    folder = os.path.abspath(folder)
    with tempfile.TemporaryDirectory(prefix="hfconv-trust-", ignore_cleanup_errors=True) as work:
        try:
            status = run_python(CAP_SOURCE + _CHILD, [folder, str(reference_memory())], work, timeout)
        except OSError as exc:
            return TrustResult("error", f"could not start a Python subprocess: {exc}")
        if status is None:
            return TrustResult("timeout", f"{timeout:g} s")
        stdout, stderr = file_tail(os.path.join(work, "stdout")), file_tail(os.path.join(work, "stderr"))
    for line in reversed(stdout.splitlines()):
        if line.startswith(_RESULT_PREFIX):
            try:
                fields = json.loads(line[len(_RESULT_PREFIX):])
            except ValueError:
                break
            return TrustResult(str(fields.get("status")), str(fields.get("error") or fields.get("reason") or
                                                               fields.get("tokenizer_class") or ""))
    tail = (stderr.strip().splitlines() or [f"exit status {status}"])[-1]
    return TrustResult("error", f"the subprocess ended without a result ({tail[:300]})")


def _custom_tokenizer(contents: FolderContents) -> bool:
    return any(e.auto_class == "AutoTokenizer" and "--" not in e.reference
               for e in auto_map_entries(contents))


def _check_trusted_tokenizer(contents: FolderContents) -> Iterator[Finding]:
    if not contents.options.trust_remote_code or not _custom_tokenizer(contents):
        return
    result = load_tokenizer_in_subprocess(str(contents.folder.root))
    if result.status == "ok":
        return
    if result.status == "skipped":
        yield finding("HFC806", f"custom tokenizer not tried: {result.detail}")
    elif result.status == "timeout":
        yield finding("HFC810", f"custom tokenizer did not load within {result.detail}; the subprocess was stopped "
                      f"(the time cap; {REMOTE_CODE_TIMEOUT_VAR} sets it in seconds)")
    else:
        yield finding("HFC805", f"custom tokenizer failed to load with trust_remote_code=True: {result.detail}")


def _check_trusted_model(contents: FolderContents) -> Iterator[Finding]:
    """With --trust-remote-code, the folder's own config and model code is imported (in the
    reference subprocess, see :mod:`hfconv.rules.transformers_reference`) where the shape check builds a
    transformers reference; code that runs past the time or memory cap there is an error. The
    build is shared with the shape check (one subprocess), which reports its other outcomes."""
    config = contents.config
    if not contents.options.trust_remote_code or not isinstance(config, dict) or not contents.loaded_tensors:
        return
    if config.get("quantization_config") or contents.folder.has("adapter_config.json"):
        return  # the shape check builds no reference for these
    from ..rules import transformers_reference as ref
    from ..rules.expected import architecture_of, family_of

    if not ref.runs_folder_code(config, True):
        return
    option = contents.options.reference
    family = family_of(config)
    known_head = family is not None and family.head_for(architecture_of(config)) is not None
    if not (option == "transformers" or (option == "auto" and not known_head and ref.transformers_available())):
        return
    try:
        ref.expected_from_transformers(contents.folder.root, config, True, tensor_names=contents.loaded_tensors)
    except ref.ReferenceCapHit as exc:
        if exc.trusted:
            modules = sorted({e.reference.split(".")[0] + ".py" for e in auto_map_entries(contents)
                              if e.file == "config.json" and "--" not in e.reference
                              and e.auto_class != "AutoTokenizer"})
            where = ", ".join(modules) or "config.json"
            yield finding("HFC811", f"{where}: {exc}", file=modules[0] if modules else "config.json")
    except ref.ReferenceUnavailable:
        pass  # the shape check reports it


# --- the check -----------------------------------------------------------------------------------
def check_custom_code(contents: FolderContents) -> Iterator[Finding]:
    """auto_map targets exist and define their classes, risky code is named, trusted code is tried."""
    # (checks/__init__.py imports this module only for a folder this test may pass: keep them in step)
    if not contents.folder.python_files and not auto_map_entries(contents):
        return
    parsed, parse_findings = _parse_all(contents)
    referenced = {e.reference.split(".")[0] + ".py" for e in auto_map_entries(contents) if "--" not in e.reference}
    for item in parse_findings:
        # A syntax error only matters for loading when auto_map (or a module it imports) uses the file.
        if item.code == "HFC803" and item.file not in referenced:
            item = finding("HFC803", item.message, file=item.file, severity="warning")
        yield item
    yield from _check_auto_map(contents, parsed)
    yield from _check_scan(parsed)
    yield from _check_trusted_tokenizer(contents)
    yield from _check_trusted_model(contents)
