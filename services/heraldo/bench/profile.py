"""Sampling profiles of running services with py-spy, and their top costs.

py-spy reads the target's memory from outside, pausing it for each sample (without the pause the
stacks come out torn and idle threads look busy); it also takes CPU of its own on a small machine,
which is why the profiled run is an extra one, never one of the measured runs. Each target gets a
flame graph (SVG) and the folded stacks (``raw``) that the top-cost tables are computed from.
"""

from __future__ import annotations

import collections
import logging
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from heraldo.errors import ConfigError

logger = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 100
STOP_TIMEOUT_S = 30.0
TOP_ENTRIES = 15
#: Frames every stack runs through (interpreter start, event loop, threads): they say nothing
#: about where the time goes, so the "total" table leaves them out.
SCAFFOLDING = ("<frozen ", "asyncio/", "threading.py", "selectors.py", "heraldo/runtime.py",
               "__main__.py")
#: Leaves where a thread waits rather than works (event-loop polls, the metrics server, idle
#: pool workers): py-spy's idle detection misses some of them, so they are counted apart.
WAITING = ("select (selectors.py)", "serve_forever (socketserver.py)",
           "_worker (concurrent/futures/thread.py)")
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str:
    """Raises ConfigError when py-spy is not installed (it comes with the ``bench`` extra)."""
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise ConfigError("py-spy is missing: pip install -e '.[bench]'")
    return found


@dataclass
class Recording:
    name: str
    pid: int
    svg_path: Path
    folded_path: Path
    processes: tuple[subprocess.Popen, ...] = ()

    def start(self) -> Recording:
        common = ["record", "--pid", str(self.pid), "--rate", str(SAMPLE_RATE_HZ)]
        log = subprocess.DEVNULL
        self.processes = tuple(
            subprocess.Popen([py_spy(), *common, "--format", fmt, "-o", str(path)],
                             stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            for fmt, path in (("flamegraph", self.svg_path), ("raw", self.folded_path)))
        logger.info("profiling name=%s pid=%d svg=%s", self.name, self.pid, self.svg_path)
        return self

    def stop(self) -> None:
        """SIGINT makes py-spy write its output and exit."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in self.processes:
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _frame_name(frame: str) -> str:
    """``send (aiosmtplib/smtp.py:512)`` becomes ``send (aiosmtplib/smtp.py)``: lines merged."""
    found = _FRAME.match(frame.strip())
    if not found:
        return frame.strip()
    path = found["file"]
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{found['function']} ({path.removeprefix('services/')})"


def top_costs(folded_path: Path, *, entries: int = TOP_ENTRIES) -> dict:
    """Functions by own samples (where the CPU went) and by total samples (what it was for).

    Percentages are of the samples that were working, not waiting.
    """
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = waiting = 0
    for line in folded_path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";")]
        # The first frame is the thread ("process 123:\"python\"" or a thread name): not code.
        frames = [frame for frame in frames if not frame.startswith(("process ", "thread "))]
        if not frames:
            continue
        if frames[-1].endswith(WAITING) or any(
                frame.startswith("BaseServer.serve_forever") for frame in frames):
            waiting += count
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            if not any(marker in frame for marker in SCAFFOLDING):
                total[frame] += count

    def share(counter: collections.Counter[str]) -> list[dict]:
        return [{"function": name, "samples": count,
                 "percent": round(100 * count / samples, 1) if samples else 0.0}
                for name, count in counter.most_common(entries)]

    return {"samples": samples, "waiting_samples": waiting, "self": share(own),
            "total": share(total)}
