"""The paper's iteration-based learning-rate schedule (Sec. 4.2), with its ResNet-110 warm-up."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

PAPER_ITERATIONS = 64_000
PAPER_MILESTONES = (32_000, 48_000)  # lr / 10 at 32k and 48k of 64k iterations
WARMUP_FROM_DEPTH = 110              # "we use 0.01 to warm up the training" for ResNet-110 (and 1202)
# The paper's plain-110 is silent on warm-up; `auto` warms up plain nets of that depth too, so plain and
# residual share one recipe and the shortcut stays the only difference between them (see conf/schedule).
WARMUP_MAX_FRACTION = 1 / 16         # `auto` safety cap: 4,000 of the paper's 64,000 iterations, scaled
RUNNING_ERR_BATCHES = 20             # "running training error": the last 20 batches (2,560 images)
RUNNING_ERR_CHECK_EVERY = 10         # how often (iterations) warm-up looks at it: a host sync each time


def scaled_milestones(iterations: int) -> tuple[int, ...]:
    """The paper's milestones at the same fractions (1/2, 3/4) of a shorter or longer run."""
    return tuple(round(m * iterations / PAPER_ITERATIONS) for m in PAPER_MILESTONES)


@dataclass(frozen=True)
class LrSchedule:
    lr: float
    milestones: tuple[int, ...]
    gamma: float = 0.1
    warmup: bool = False
    warmup_lr: float = 0.01
    warmup_until_err: float = 80.0   # percent running training error
    warmup_max_iters: int = 4000

    @classmethod
    def from_config(cls, optim, schedule, depth: int) -> "LrSchedule":
        milestones = schedule.milestones
        milestones = scaled_milestones(schedule.iterations) if milestones is None else tuple(milestones)
        warmup = depth >= WARMUP_FROM_DEPTH if schedule.warmup == "auto" else bool(schedule.warmup)
        cap = schedule.warmup_max_iters
        cap = max(1, round(schedule.iterations * WARMUP_MAX_FRACTION)) if cap in (None, "auto") else int(cap)
        return cls(
            lr=float(optim.lr), milestones=tuple(int(m) for m in milestones), gamma=float(schedule.gamma),
            warmup=warmup, warmup_lr=float(schedule.warmup_lr),
            warmup_until_err=float(schedule.warmup_until_err), warmup_max_iters=cap,
        )

    def identity(self) -> dict:
        """What this schedule computes, for the changed-config guard: the warm-up settings only
        when warm-up is on (a depth-56 run never reads them, so they cannot make it differ)."""
        out = asdict(self)
        if not self.warmup:
            for key in ("warmup_lr", "warmup_until_err", "warmup_max_iters"):
                out.pop(key)
        out["milestones"] = list(self.milestones)
        return out

    def lr_at(self, iteration: int, warming_up: bool = False) -> float:
        """The lr of iteration `iteration` (0-based); `warming_up` while warm-up has not ended."""
        if warming_up:
            return self.warmup_lr
        drops = sum(iteration >= m for m in self.milestones)
        return float(f"{self.lr * self.gamma**drops:.12g}")  # 0.01, not 0.010000000000000002

    def warmup_should_end(self, iteration: int, running_err: float) -> bool:
        """Warm-up ends once the running training error is below the threshold (the paper saw
        about 400 iterations), or at the safety limit so a stuck run still gets the real lr."""
        return running_err < self.warmup_until_err or iteration >= self.warmup_max_iters


@dataclass
class RunningError:
    """The running training error that ends warm-up: (wrong, seen) of the last few batches. Part
    of the checkpoint, so a run killed during warm-up resumes with the same window."""
    size: int = RUNNING_ERR_BATCHES
    batches: list = field(default_factory=list)

    def add(self, wrong, seen: int) -> None:
        self.batches = (self.batches + [(wrong, seen)])[-self.size:]

    def percent(self) -> float:
        return 100.0 * float(sum(w for w, _ in self.batches)) / max(sum(n for _, n in self.batches), 1)

    def state(self) -> list[tuple[int, int]]:
        return [(int(w), int(n)) for w, n in self.batches]
