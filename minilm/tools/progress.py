"""Progress of a long embedding job on stderr (embed.py, minilm.embed with progress=True): texts done, rate,
elapsed and time left, on a clock of its own. tests/test_stream.py checks what it prints."""
import contextlib
import sys
import threading
import time


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"


class Progress:
    """Progress on stderr: texts done, rate, elapsed and (with a known total) time left. A background thread shows
    it on a clock, not when a forward happens to finish: on a terminal one line rewritten every second, otherwise a
    line every EVERY seconds; the first once quiet_for seconds have passed (nothing for a job that ends sooner).
    The caller reports texts done (plus `offset`, the texts of earlier calls: embed_stream's chunks) and calls
    finish() at the end."""
    EVERY_TTY, EVERY = 1.0, 3.0  # seconds between updates on a terminal, and between lines otherwise

    def __init__(self, total: int | None, enabled: bool, every: float | None = None, quiet_for: float = 0.0):
        self.total, self.enabled, self.quiet_for, self.offset, self.done = total, enabled, quiet_for, 0, 0
        self.status = None  # what the job is doing while no text is done yet (compiling), shown instead of a count
        self.tty = sys.stderr is not None and sys.stderr.isatty()
        self.every = (self.EVERY_TTY if self.tty else self.EVERY) if every is None else every
        self.start = self.last = time.perf_counter()
        self.shown, self.stopped = False, threading.Event()
        if enabled:
            threading.Thread(target=self.tick, daemon=True).start()

    def __call__(self, done: int, final: bool = False):
        """done: texts finished by the current call; final: this call's texts are all done and nothing follows."""
        self.done = self.offset + done
        if final:
            self.finish()

    def tick(self):
        while not self.stopped.wait(min(self.every, 0.25)):
            now = time.perf_counter()
            if now - self.start >= self.quiet_for and (not self.shown or now - self.last >= self.every):
                self.show(now)

    def show(self, now: float, final: bool = False):
        self.last, self.shown = now, True
        elapsed = now - self.start
        rate = self.done / max(elapsed, 1e-9)
        if self.status and not final and not self.done:
            print(f"{self.status}  {clock(elapsed)} elapsed", end="\r" if self.tty else "\n", file=sys.stderr,
                  flush=True)
            return
        line = f"embedded {self.done}/{self.total} texts" if self.total else f"embedded {self.done} texts"
        line += f"  {rate:.0f}/s  {clock(elapsed)} elapsed"
        if self.total and not final:
            line += f"  {clock((self.total - self.done) / rate) + ' left' if rate else 'starting'}"
        print(line, end="\r" if self.tty and not final else "\n", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def stopped_on_error(self, own: bool = True):
        """An error (or a consumer that stops reading) silences the clock, without a last line."""
        try:
            yield
        except BaseException:  # GeneratorExit included
            if own:
                self.stopped.set()
            raise

    def finish(self):
        """Stop the clock; the last line, if the job was long enough to show any."""
        if self.stopped.is_set() or not self.enabled:
            return
        self.stopped.set()
        now = time.perf_counter()
        if self.shown or now - self.start >= self.quiet_for:
            self.show(now, final=True)
