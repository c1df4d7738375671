"""The outcome of one job in the sandbox: a program on its own, or a candidate against its tests (two sandboxes).

    run_program(source, python, limits, sandboxed)              # {"status", "returncode", "seconds", ...}
    run_test(TestCase(program, prompt, test, entry_point), python, limits, sandboxed)

Statuses (xtf.sandbox's docstring says what each means); "detail" names the limit or rule of the harness that
decided a non-passing outcome ("" for an ordinary failure, whose traceback is in "stderr_tail").
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets

from xtf.sandbox_proc import STDERR_TAIL_CHARS, Ended, Process, limit_status

EARLY_EXIT = "exited with status 0 before the end of the program (sys.exit / os._exit)"
NOT_STARTED = "the sandbox did not start"
TESTS_TAIL_CHARS = 600       # of stderr_tail, at most this much is the tests' traceback (the rest: the program's)


@dataclasses.dataclass(frozen=True)
class TestCase:
    """A candidate and its tests. `program` (model-written) runs in one sandbox and must define `entry_point`;
    `prompt` + `test` (trusted: the data set's) run in another, where check(candidate) calls the candidate across
    a pipe, as plain data (xtf.sandbox_plain). The candidate's sandbox never holds the test source or verdict."""
    __test__ = False  # not a pytest class

    program: str
    prompt: str
    test: str
    entry_point: str


def _outcome(status: str, ended: Ended, detail: str = "", stderr_tail: str | None = None) -> dict:
    return {"status": status, "returncode": ended.returncode, "seconds": ended.seconds,
            "stderr_tail": ended.stderr_tail if stderr_tail is None else stderr_tail, "detail": detail}


def _text(source: str) -> str:
    """`source` as valid UTF-8 (a model can write lone surrogates; the file the sandbox runs cannot hold them)."""
    return source.encode("utf-8", errors="replace").decode("utf-8")


def run_program(program: str, python: str, limits, sandboxed: bool) -> dict:
    """Run one program to its end or a limit. "passed": it ran to its end and exited 0 (its own word: see
    xtf.sandbox). Never raises for the program's behaviour."""
    token = secrets.token_hex(16)  # fresh per run: only the bootstrap's code writes it, after the program
    proc = Process("program", {"source": _text(program), "token": token}, {}, python, limits, sandboxed)
    if not proc.wait(proc.started_at + limits.timeout_s):
        proc.kill()
    ended = proc.finish()
    if not ended.ready:
        return _outcome("error", ended, NOT_STARTED)
    limit = limit_status(ended, limits)
    if ended.returncode == 0 and ended.end == token and not ended.timed_out:
        return _outcome("passed", ended)
    if limit is not None:
        return _outcome(limit[0], ended, limit[1])
    return _outcome("failed", ended, EARLY_EXIT if ended.returncode == 0 else "")


def _start_pair(case: TestCase, python: str, limits, sandboxed: bool) -> tuple[Process, Process]:
    """The candidate's sandbox and the tests' one, joined by a request pipe and a result pipe."""
    req_r, req_w = os.pipe()
    res_r, res_w = os.pipe()
    started: list[Process] = []
    try:
        started.append(Process("serve", {"source": _text(case.program), "entry_point": case.entry_point},
                               {"req": req_r, "resp": res_w}, python, limits, sandboxed))
        started.append(Process("check", {"prompt": case.prompt, "test": case.test, "entry_point": case.entry_point},
                               {"req": req_w, "resp": res_r}, python, limits, sandboxed))
    except BaseException:
        for p in started:
            p.finish()
        raise
    finally:  # only the two sandboxes hold the pipes now: either one's end is the other's EOF
        for fd in (req_r, req_w, res_r, res_w):
            os.close(fd)
    return started[0], started[1]


def _stderr(candidate: Ended, tests: Ended) -> str:
    """The candidate's stderr tail, then the tests' (their traceback says which assertion failed)."""
    theirs = tests.stderr_tail.strip()[-TESTS_TAIL_CHARS:]
    if not theirs:
        return candidate.stderr_tail
    sep = "\n[tests] "
    return candidate.stderr_tail[-(STDERR_TAIL_CHARS - len(theirs) - len(sep)):] + sep + theirs


def run_test(case: TestCase, python: str, limits, sandboxed: bool) -> dict:
    """Run a candidate against its tests; "passed" only if check() returned in the tests' sandbox. The wall clock
    (timeout_s) counts from the candidate's start to the end of the tests. Never raises for the candidate's
    behaviour."""
    candidate, tests = _start_pair(case, python, limits, sandboxed)
    deadline = candidate.started_at + limits.timeout_s
    if not tests.wait(deadline):
        tests.kill()
        candidate.kill()
    elif not candidate.wait(deadline):  # the tests are over: its requests pipe is closed, so it ends at once
        candidate.kill()
    cand, done = candidate.finish(), tests.finish()
    if not done.timed_out:  # the verdict is the tests' one: a candidate that lingered after them is not a timeout
        cand = dataclasses.replace(cand, timed_out=False)
    stderr = _stderr(cand, done)
    if not (cand.ready and done.ready):
        return _outcome("error", cand, NOT_STARTED, (cand if not cand.ready else done).stderr_tail)
    try:
        verdict, why = json.loads(done.end) if done.end else ("", "")
    except (ValueError, TypeError):
        verdict, why = "", ""
    if verdict == "passed" and done.returncode == 0:
        return _outcome("passed", cand, "", stderr)
    limit = limit_status(cand, limits) or limit_status(done, limits, " (in the tests' process)")
    if limit is not None:
        return _outcome(limit[0], cand, limit[1], stderr)
    detail = {"gone": EARLY_EXIT.replace("the program", "the tests") if cand.returncode == 0 else "",
              "not_plain": f"the function returned a value that is not plain data: {why[:300]}",
              "too_large": f"a result of the function is over max_output_kb={limits.max_output_kb} ({why})",
              "": f"the tests' process ended without a verdict (exit status {done.returncode}; see stderr_tail)"}
    return _outcome("failed", cand, detail.get(verdict, ""), stderr)
