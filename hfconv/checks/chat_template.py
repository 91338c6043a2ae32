"""Chat template checks: the template compiles, reads no Python internals, ends an assistant turn
with an eos id; all of it inside hard time and memory caps.

A chat template is a program from the folder. jinja2 folds constant expressions while compiling
(``'%999999999s' % 'x'`` allocates a gigabyte before anything renders), a loop over literal lists
calls nothing the sandbox could time, and ``{% set s = s ~ s %}`` doubles a string per step. So
nothing of the template is compiled or rendered in hfconv's own process: one child process
compiles, scans and renders every template of the folder inside jinja2's
ImmutableSandboxedEnvironment, set up as transformers sets it up, with an address-space cap
(``MEMORY_CAP_BYTES`` over its own size), a CPU-time cap and a wall-clock timeout. A template that
hits a cap is a finding (HFC523) that names the cap.

On Linux the child is a fork of hfconv's own process (jinja2 imported before the fork): it starts
in about a millisecond, where a fresh Python that imports jinja2 costs 0.1-0.3 s of CPU per folder.
``validate --jobs`` forks from a process with several threads, which is safe only because the child
does nothing but pure-Python jinja2 work on objects it creates itself (no import, no lock another
thread may hold, no I/O but its pipe) and leaves with ``os._exit``. Elsewhere the child is a fresh
``python -I`` (only the standard library and jinja2).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from ..contents import FolderContents
from ..findings import Finding, finding, register
from ..interrupts import uninterrupted

register("HFC523", "error", "chat template over budget",
         "Compiling the chat template or rendering a two-message chat with it needed more memory or time than "
         "hfconv allows (a few hundred MB, a few seconds); apply_chat_template in transformers would do the "
         "same work on every call, so the template hangs or exhausts the memory of whoever uses it (nested "
         "loops over literal lists, a constant-folded format string with a huge width, a string doubled in a "
         "loop). A time cap is a warning (machines differ), a memory cap an error.",
         "Rewrite the template without the huge loop or string; real chat templates render in milliseconds.",
         "tokenizer_config.json: chat_template needed more than hfconv's 256 MiB memory cap to compile or render "
         "a two-message chat; apply_chat_template would exhaust memory the same way")

MAX_TEMPLATE_BYTES = 1_000_000
TEMPLATE_TIME_BUDGET_S = 1.0
"""CPU seconds for each step (compile, scan, render): a timer signal in the child, and a deadline the
sandbox checks at calls and attribute reads."""
TEMPLATE_MAX_OUTPUT = 1_000_000
MEMORY_CAP_BYTES = 256 << 20
"""Address space the child may add to what it uses once jinja2 is imported."""
CPU_CAP_S = 3
"""CPU seconds of the whole child (RLIMIT_CPU), behind the per-step CPU timer (``TEMPLATE_TIME_BUDGET_S``)
that stops loops calling nothing the sandbox hooks see."""
WALL_TIMEOUT_S = 6.0
MARKER = "hfconvMARKER7q"
SPECIAL_ROLES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class ChatTemplate(NamedTuple):
    """One chat template and where it comes from."""

    file: str
    name: str
    """``default`` or the name in a list of templates."""
    source: str

    @property
    def label(self) -> str:
        return "chat_template" if self.name == "default" else f"chat_template {self.name!r}"

    @property
    def pointer(self) -> str | None:
        return "$.chat_template" if self.file.endswith(".json") else None


def chat_templates(contents: FolderContents,
                   read_text: Callable[[str], str]) -> tuple[list[ChatTemplate], list[Finding]]:
    """All templates of the folder; the effective one (chat_template.jinja wins) comes first.

    ``read_text(name)`` reads a folder file as UTF-8 (bounded); it raises ``ValueError`` with the
    rest of a sentence about the file.
    """
    folder = contents.folder
    templates: list[ChatTemplate] = []
    problems: list[Finding] = []
    if folder.has("chat_template.jinja") and "chat_template.jinja" not in folder.special_files:
        try:
            templates.append(ChatTemplate("chat_template.jinja", "default", read_text("chat_template.jinja")))
        except ValueError as exc:
            problems.append(finding("HFC512", f"chat_template.jinja {exc}", file="chat_template.jinja"))
    config = contents.json.get("tokenizer_config.json")
    value = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(value, str):
        templates.append(ChatTemplate("tokenizer_config.json", "default", value))
    elif isinstance(value, list):
        entries = [e for e in value if isinstance(e, dict) and isinstance(e.get("template"), str)]
        entries.sort(key=lambda e: e.get("name") != "default")
        for entry in entries:
            templates.append(ChatTemplate("tokenizer_config.json", str(entry.get("name")), entry["template"]))
    return templates, problems


# --- the child ----------------------------------------------------------------------------------
# The child's program. Where fork is available (Linux) it is executed once in hfconv's own process
# (definitions only: nothing of a template runs there) and a forked child calls main(); elsewhere it
# runs as `python -I -c _CHILD`, reading one JSON request on stdin. Either way it reports one JSON
# line per step ("start" before, "done" after) so that the parent knows which step a killed child
# was in.
_CHILD = r'''
import json, re, sys, time
import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

BUDGET = 1.0
MAX_OUTPUT = 1000000
request = {}

def emit(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()

def set_limits(memory_cap, cpu_cap):
    try:
        import resource
        size = 0
        with open("/proc/self/statm") as handle:
            size = int(handle.read().split()[0]) * resource.getpagesize()
        cap = size + int(memory_cap)
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard == resource.RLIM_INFINITY or cap < hard:
            resource.setrlimit(resource.RLIMIT_AS, (cap, hard if hard != resource.RLIM_INFINITY else cap))
        cpu = int(cpu_cap)
        soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if hard == resource.RLIM_INFINITY or cpu < hard:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, hard if hard != resource.RLIM_INFINITY else cpu + 1))
    except (ImportError, OSError, ValueError):
        pass

class BudgetExceeded(jinja2.exceptions.TemplateError):
    pass

class GenerationTag(Extension):
    tags = {"generation"}
    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)
    def _render(self, caller):
        return caller()

def is_id(value):
    return isinstance(value, int) and not isinstance(value, bool)

def environment(deadline):
    def check():
        if time.monotonic() > deadline:
            raise BudgetExceeded("time budget exceeded")

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})
        def call_binop(self, context, operator, left, right):
            check()
            if operator == "**" and is_id(right) and abs(right) > 1000:
                raise BudgetExceeded("exponent too large")
            if operator == "*":
                size = next((len(x) for x in (left, right) if isinstance(x, (str, list, tuple))), None)
                count = next((x for x in (left, right) if is_id(x)), None)
                if size is not None and count is not None and size * count > MAX_OUTPUT:
                    raise BudgetExceeded("repetition too large")
            return super().call_binop(context, operator, left, right)
        def call(self, context, obj, *args, **kwargs):
            check()
            return super().call(context, obj, *args, **kwargs)
        def getattr(self, obj, attribute):
            check()
            return super().getattr(obj, attribute)
        def getitem(self, obj, argument):
            check()
            return super().getitem(obj, argument)

    def budget_range(*args):
        for value in range(*args)[:100000]:
            check()
            yield value

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
    env.globals["range"] = budget_range
    return env

def compile_error(source):
    env = environment(time.monotonic() + BUDGET)
    try:
        env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        return "%s at line %s" % (exc.message, exc.lineno)
    except BudgetExceeded:
        raise
    except jinja2.exceptions.TemplateError as exc:
        return str(exc) or type(exc).__name__
    except RecursionError as exc:
        return "it is too deeply nested to compile (RecursionError)"
    return None

def internal_access(source):
    env = environment(time.monotonic() + BUDGET)
    eval_ctx = nodes.EvalContext(env)
    def constant(node):
        try:
            return node.as_const(eval_ctx)
        except MemoryError:
            raise
        except Exception:
            return None
    try:
        tree = env.parse(source)
        for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Const)):
            if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
                return [node.attr, node.lineno]
            if isinstance(node, nodes.Getitem):
                key = constant(node.arg)
                if isinstance(key, str) and key.startswith("_"):
                    return [key, node.lineno]
            if isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
                name = constant(node.args[0])
                if not isinstance(name, str):
                    return ["attr(<computed name>)", node.lineno]
                if name.startswith("_"):
                    return [name, node.lineno]
            if isinstance(node, nodes.Const) and isinstance(node.value, str) and re.fullmatch(r"__\w+__", node.value):
                return [node.value, node.lineno]
    except BudgetExceeded:
        raise
    except (jinja2.exceptions.TemplateError, RecursionError):
        return None
    return None

def render_probe(source, specials):
    deadline = time.monotonic() + BUDGET
    for content in (request["marker"], [{"type": "text", "text": request["marker"]}]):
        if time.monotonic() > deadline:
            raise BudgetExceeded("time budget exceeded")
        env = environment(deadline)
        messages = [{"role": "user", "content": "Hello" if isinstance(content, str) else
                     [{"type": "text", "text": "Hello"}]},
                    {"role": "assistant", "content": content}]
        try:
            compiled = env.from_string(source)
            out = []
            total = 0
            for chunk in compiled.generate(messages=messages, add_generation_prompt=False, tools=None,
                                           documents=None, **specials):
                out.append(chunk)
                total += len(chunk)
                if total > MAX_OUTPUT:
                    raise BudgetExceeded("output too large")
            text = "".join(out)
        except (BudgetExceeded, MemoryError):
            raise
        except Exception:
            continue
        index = text.find(request["marker"])
        if index >= 0:
            return text[index + len(request["marker"]):]
    return None

def on_timer(signum, frame):
    raise BudgetExceeded("time budget exceeded")

def arm(seconds):
    pass

def install_timer():
    global arm
    try:
        import signal
        signal.signal(signal.SIGPROF, on_timer)
        def arm(seconds):
            signal.setitimer(signal.ITIMER_PROF, seconds)
    except (ImportError, AttributeError, ValueError, OSError):
        pass

def step(name, index, work):
    emit(start=name, index=index)
    try:
        # CPU time of this process: also stops loops that call nothing the sandbox hooks see.
        arm(BUDGET)
        try:
            value = work()
        finally:
            arm(0)
    except BudgetExceeded as exc:
        emit(done=name, index=index, cap="memory" if "large" in str(exc) else "time", detail=str(exc))
        return None, True
    except MemoryError:
        emit(done=name, index=index, cap="memory", detail="MemoryError")
        return None, True
    emit(done=name, index=index, value=value)
    return value, False

def main(the_request, the_emit=None):
    global request, BUDGET, MAX_OUTPUT, emit
    request = the_request
    if the_emit is not None:
        emit = the_emit
    BUDGET = float(request["time_budget"])
    MAX_OUTPUT = int(request["max_output"])
    set_limits(request["memory_cap"], request["cpu_cap"])
    sys.setrecursionlimit(3000)
    install_timer()
    failed = set()
    for index, source in enumerate(request["templates"]):
        error, capped = step("compile", index, lambda: compile_error(source))
        if capped or error is not None:
            failed.add(index)
            continue
        reach, capped = step("scan", index, lambda: internal_access(source))
        if capped or reach is not None:
            failed.add(index)
    probe = request.get("probe")
    if probe is not None and probe not in failed:
        step("render", probe, lambda: render_probe(request["templates"][probe], request["specials"]))
    emit(end=True)

if __name__ == "__main__":
    main(json.loads(sys.stdin.read()))
'''

_FORK = sys.platform.startswith("linux") and hasattr(os, "fork")
# Python 3.12+ warns about every fork of a process with threads; this one is made for it (see above).
warnings.filterwarnings("ignore", message=r"This process \(pid=\d+\) is multi-threaded, use of fork\(\)",
                        category=DeprecationWarning, module=__name__)
"""Fork hfconv's own process for the child (Linux, where RLIMIT_AS holds) instead of starting a
fresh Python: the fork starts in a millisecond, a fresh Python with jinja2 costs ~0.1-0.3 s of CPU."""
_child_program: dict | None = None
_child_program_lock = threading.Lock()


def _forkable_program() -> dict:
    """_CHILD's definitions, executed once in this process (jinja2 is imported here, before any
    fork, so that the forked child imports nothing: another thread may hold an import lock)."""
    global _child_program
    with _child_program_lock:
        if _child_program is None:
            namespace: dict = {"__name__": "hfconv_chat_template_child"}
            exec(compile(_CHILD, "<hfconv chat template child>", "exec"), namespace)
            _child_program = namespace
        return _child_program


def _forked_child(program: dict, request: dict, write_fd: int, max_fd: int, mask: Iterable[int] = ()) -> None:
    """In the forked child: pure-Python jinja2 work under the caps, results on ``write_fd``, then
    os._exit (no clean-up of the parent's objects, threads or buffers runs here).

    It starts with SIGINT and SIGTERM blocked (:func:`_run_forked`); ``mask``, the parent's signal
    mask, is restored once their default actions are back."""
    status = 70
    try:
        # Only the pipe stays open: a write end of another thread's pipe kept here would hold back
        # that thread's end-of-file.
        try:
            open_fds = [int(name) for name in os.listdir("/proc/self/fd")]
        except (OSError, ValueError):
            open_fds = list(range(3, max_fd))
        for fd in open_fds:
            if fd > 2 and fd != write_fd:
                try:
                    os.close(fd)
                except OSError:
                    pass
        gc.freeze()  # never finalize the parent's objects here
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # not the CLI's handlers: the parent cleans up
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        # jinja2's one module-level cache with a lock: a parent thread may have held it at the fork.
        jinja2_lexer = program["jinja2"].lexer
        jinja2_lexer._lexer_cache = program["jinja2"].utils.LRUCache(50)

        def emit(**fields: object) -> None:
            data = (json.dumps(fields) + "\n").encode("utf-8")
            while data:
                data = data[os.write(write_fd, data):]

        program["main"](request, emit)
        status = 0
    except BaseException:  # noqa: BLE001 - the child only reports through the pipe
        pass
    finally:
        os._exit(status)


def _run_forked(request: dict) -> tuple[bytes, int | None, bool]:
    """(what the child wrote, its exit status (negative: killed by that signal), killed for the wall
    timeout) for a forked child."""
    program = _forkable_program()
    max_fd = min(max(os.sysconf("SC_OPEN_MAX"), 256), 1 << 16)  # (only where /proc cannot list them)
    chunks: list[bytes] = []
    timed_out = finished = reaped = False
    status = 0
    pid = 0
    read_fd, write_fd = os.pipe()
    try:
        # Forked and handed to the kill below in one uninterrupted step (hfconv.interrupts): a
        # signal in between left the child running, unreaped. The child starts with SIGINT and
        # SIGTERM blocked: a Ctrl-C reaches the whole process group, and the CLI's handler in the
        # child would unwind the parent's frames there (its clean-ups, its messages) instead of
        # ending the child; it unblocks them once their default actions are back.
        with uninterrupted():
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                pid = os.fork()
                if pid == 0:
                    _forked_child(program, request, write_fd, max_fd, mask)  # never returns
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(write_fd)
            write_fd = -1
        deadline = time.monotonic() + WALL_TIMEOUT_S
        poller = select.poll()
        poller.register(read_fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if not poller.poll(left * 1000):
                continue
            data = os.read(read_fd, 1 << 16)
            if not data:
                break
            chunks.append(data)
        finished = True
    finally:
        try:
            if write_fd >= 0:
                os.close(write_fd)
            os.close(read_fd)
            # After end of file the child is exiting (only it held the write end); one that lingers
            # past the deadline, a timed-out one, or one whose parent is interrupted is killed.
            while pid and finished and not timed_out:
                with uninterrupted():  # reaped and recorded in one step: a reaped pid is never killed
                    waited, status = os.waitpid(pid, os.WNOHANG)
                    reaped = waited == pid
                if reaped:
                    break
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(0.001)
            if pid and not reaped:
                with uninterrupted():
                    os.kill(pid, signal.SIGKILL)
                    _, status = os.waitpid(pid, 0)
                    reaped = True
        except ChildProcessError:
            status = 0
        except BaseException:  # interrupted while the child was waited for: it is killed all the same
            if pid and not reaped:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
            raise
    return b"".join(chunks), os.waitstatus_to_exitcode(status), timed_out


def _run_spawned(request: dict) -> tuple[bytes, int | None, bool]:
    """The same for a fresh ``python -I`` child (where fork is unavailable)."""
    import subprocess  # not where the child is forked (Linux)

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", _CHILD], input=json.dumps(request).encode("utf-8"),
                              capture_output=True, timeout=WALL_TIMEOUT_S, env=env, cwd=os.path.dirname(__file__))
    except subprocess.TimeoutExpired as exc:
        return exc.stdout or b"", None, True
    return proc.stdout, proc.returncode, False


@dataclass
class TemplateVerdict:
    """What the child found about one template."""

    error: str | None = None
    """Why it does not compile."""
    internal: tuple[str, int] | None = None
    """(name, line) of a Python internal it reads."""
    cap: tuple[str, str, str] | None = None
    """(cap kind 'memory'/'time', step, detail) when a cap stopped the work."""
    after: str | None = None
    """What the probe rendered after the assistant's content (effective template only)."""
    checked: bool = False


def run_child(templates: list[ChatTemplate], probe: int | None, specials: dict[str, str | None],
              fork: bool | None = None) -> tuple[list[TemplateVerdict], str | None]:
    """Compile, scan and (template ``probe``) render the templates in a capped child process.

    ``fork``: fork this process (True) or start a fresh Python (False); None: fork where available.
    Returns one verdict per template, and a reason when the child could not run at all.
    """
    verdicts = [TemplateVerdict() for _ in templates]
    request = {"templates": [t.source for t in templates], "probe": probe, "specials": specials,
               "marker": MARKER, "time_budget": TEMPLATE_TIME_BUDGET_S, "max_output": TEMPLATE_MAX_OUTPUT,
               "memory_cap": MEMORY_CAP_BYTES, "cpu_cap": CPU_CAP_S}
    forked = _FORK if fork is None else fork
    try:
        stdout, returncode, killed_by_timeout = _run_forked(request) if forked else _run_spawned(request)
    except OSError as exc:
        what = "fork a child process" if forked else "start a Python subprocess"
        return verdicts, f"could not {what} ({exc})"
    pending: tuple[str, int] | None = None
    ended = False
    for line in stdout.decode("utf-8", "replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if "start" in event:
            pending = (str(event["start"]), int(event["index"]))
        elif "done" in event:
            pending = None
            name, verdict = str(event["done"]), verdicts[int(event["index"])]
            verdict.checked = True
            if "cap" in event:
                verdict.cap = (str(event["cap"]), name, str(event.get("detail", "")))
            elif name == "compile":
                verdict.error = event.get("value")
            elif name == "scan" and event.get("value"):
                attr, lineno = event["value"]
                verdict.internal = (str(attr), int(lineno))
            elif name == "render":
                verdict.after = event.get("value")
        elif event.get("end"):
            ended = True
    if pending is not None:
        step, index = pending
        if killed_by_timeout or returncode in (-9, -24, 152, 137):  # SIGKILL, SIGXCPU
            cap = ("time", step, f"the {CPU_CAP_S} s CPU cap or the {WALL_TIMEOUT_S:g} s timeout")
        else:
            cap = ("memory", step, f"the child stopped (exit status {returncode})")
        verdicts[index].cap = cap
        verdicts[index].checked = True
        return verdicts, None
    if not ended:
        return verdicts, (f"the template checker did not finish (exit status {returncode})" if not killed_by_timeout
                          else f"the template checker did not finish within {WALL_TIMEOUT_S:g} s")
    return verdicts, None


def _cap_finding(template: ChatTemplate, cap: tuple[str, str, str]) -> Finding:
    kind, step, detail = cap
    doing = {"compile": "to compile", "scan": "to scan", "render": "to render a two-message chat"}.get(step, step)
    if kind == "memory":
        what = f"more than hfconv's {MEMORY_CAP_BYTES >> 20} MiB memory cap {doing} ({detail})"
        then = "apply_chat_template would exhaust memory the same way"
    else:
        what = f"more than hfconv's time cap {doing} ({detail})"
        then = "apply_chat_template would hang the same way"
    return finding("HFC523", f"{template.file}: {template.label} needed {what}; {then}, so rewrite the template "
                   "without the huge loop or string", file=template.file, tensor=template.pointer,
                   severity="error" if kind == "memory" else "warning")


def check_chat_template(contents: FolderContents, read_text: Callable[[str], str],
                        specials: Mapping[str, str | None] | None, candidates: Iterable[str],
                        id_of: Callable[[str], int | None], eos: tuple[str, list[int]] | None) -> Iterator[Finding]:
    """HFC512 (does not compile), HFC518 (reads internals), HFC523 (over a cap), HFC513 (turn end not eos).

    Args:
        contents: the folder.
        read_text: reads a folder file as bounded UTF-8 text (raises ValueError with a reason).
        specials: role -> token passed to the template; None when there is no vocabulary (no probe).
        candidates: special tokens that may end a turn.
        id_of: token -> id or None.
        eos: (file, eos ids) generation stops at, or None.
    """
    templates, problems = chat_templates(contents, read_text)
    yield from problems
    if not templates:
        return
    checked = [t for t in templates if len(t.source) <= MAX_TEMPLATE_BYTES]
    # (A template over the size limit is not compiled: no real template is this large.)
    if not checked:
        return
    probe = 0 if checked and checked[0] is templates[0] and specials is not None and eos is not None else None
    verdicts, trouble = run_child(checked, probe, {r: (specials or {}).get(r) for r in SPECIAL_ROLES})
    if trouble is not None:
        yield finding("HFC523", f"{checked[0].file}: the chat template was not checked: {trouble}",
                      file=checked[0].file, severity="info")
        return
    for template, verdict in zip(checked, verdicts):
        if verdict.cap is not None:
            yield _cap_finding(template, verdict.cap)
        elif verdict.error is not None:
            yield finding("HFC512", f"{template.file}: {template.label} does not parse: {verdict.error}; fix the "
                          "jinja2 syntax", file=template.file, tensor=template.pointer)
        elif verdict.internal is not None:
            name, line = verdict.internal
            yield finding("HFC518", f"{template.file}: {template.label} reads {name!r} (line {line}), a Python "
                          "internal; refused as a sandbox-escape attempt (jinja2's sandbox in transformers refuses "
                          "it too)", file=template.file, tensor=template.pointer)
    if probe is None or eos is None:
        return
    after = verdicts[probe].after
    if after is None:
        return
    stripped = after.lstrip()
    end = next((t for t in sorted(set(candidates), key=len, reverse=True) if t.strip() and stripped.startswith(t)),
               None)
    if end is None:
        return
    end_id = id_of(end)
    eos_file, eos_ids = eos
    if end_id is None or end_id in eos_ids:
        return
    shown = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    effective = checked[probe]
    yield finding("HFC513", f"{effective.file}: the chat template ends assistant turns with {end!r} (id {end_id}), "
                  f"which is not among {eos_file}'s eos_token_id {shown}; add {end_id} to eos_token_id or "
                  "generation will not stop after the answer", file=effective.file)
