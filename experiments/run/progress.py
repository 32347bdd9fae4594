"""What a run shows while it trains: a tqdm bar on a terminal; in a log (nohup, SLURM, `| tee`) a line per
evaluation point and at least one a minute, each with iteration / total, percent and ETA."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

LOG_EVERY_S = 60.0  # in a log, the longest silence between lines


class Progress:
    def __init__(self, mode: str, total: int, start: int, folder, batch_size: int = 1):
        self.name = f"{folder.parent.name}/{folder.name}"
        self.total, self.start, self.t0 = total, start, time.perf_counter()
        self.last_line = self.t0
        tty = sys.stderr.isatty() if mode == "auto" else mode in (True, "bar")
        # Counted in iterations, shown in images: the rate reads as images/s; the iteration is a postfix.
        self.bar = tqdm(total=total, initial=start, desc=self.name, unit="img", unit_scale=batch_size,
                        dynamic_ncols=True, file=sys.stderr) if tty else None

    def where(self, iteration: int) -> str:
        """`iter 250 / 2000 (12%), ETA 0:05:12`: the ETA from this process's pace so far, evaluation included."""
        done, now = iteration - self.start, time.perf_counter()
        eta = "?" if done <= 0 else _clock((self.total - iteration) * (now - self.t0) / done)
        return f"iter {iteration} / {self.total} ({100 * iteration // max(self.total, 1)}%), ETA {eta}"

    def update(self, iteration: int, lr: float, err: float) -> None:
        """Between evaluation points: `err` is the running training error (%) since the last one."""
        if self.bar is None:
            if time.perf_counter() - self.last_line >= LOG_EVERY_S:
                self._log(f"{self.name} training, {self.where(iteration)}, lr {lr:.3g}, running train_err {err:.1f}%")
            return
        self.bar.update(iteration - self.bar.n)
        self.bar.set_postfix(iter=iteration, lr=f"{lr:.3g}", train_err=f"{err:.1f}%", refresh=False)

    def point(self, row: dict) -> None:
        line = (f"{self.name} iter {row['iter']} lr {row['lr']:.3g} train_err {row['train_err']:.2f}% "
                f"test_err {row['test_err']:.2f}% {row['images_per_s']:.0f} img/s")
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            self._log(f"{self.name} {self.where(row['iter'])}, lr {row['lr']:.3g}, train_err "
                      f"{row['train_err']:.2f}%, test_err {row['test_err']:.2f}%, {row['images_per_s']:.0f} img/s")

    def _log(self, line: str) -> None:
        print(line, flush=True)
        self.last_line = time.perf_counter()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
