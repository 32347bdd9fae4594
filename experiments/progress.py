"""What a run shows while it trains: a tqdm bar on a terminal, a log line per evaluation point otherwise."""
from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    def __init__(self, mode: str, total: int, start: int, folder, batch_size: int = 1):
        self.name = f"{folder.parent.name}/{folder.name}"
        tty = sys.stderr.isatty() if mode == "auto" else mode in (True, "bar")
        # Counted in iterations, shown in images: the rate reads as images/s; the iteration is a postfix.
        self.bar = tqdm(total=total, initial=start, desc=self.name, unit="img", unit_scale=batch_size,
                        dynamic_ncols=True, file=sys.stderr) if tty else None

    def update(self, iteration: int, lr: float, acc: dict) -> None:
        if self.bar is None:
            return
        seen = max(acc["seen"], 1)
        self.bar.update(iteration - self.bar.n)
        self.bar.set_postfix(iter=iteration, lr=f"{lr:.3g}", train_err=f"{100.0 * float(acc['wrong']) / seen:.1f}%",
                             refresh=False)

    def point(self, row: dict) -> None:
        line = (f"{self.name} iter {row['iter']} lr {row['lr']:.3g} train_err {row['train_err']:.2f}% "
                f"test_err {row['test_err']:.2f}% {row['images_per_s']:.0f} img/s")
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
