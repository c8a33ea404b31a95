"""What may stop a training run, and how it stops: signals, non-finite steps, collapse signals.

    stop, collapse, skips = StopFlag(), CollapseWatch(cfg.train), SkipGuard(cfg.train.max_consecutive_skips)
    m["collapse"] = collapse.update(m)      # "" or the signals seen this step
    skips.update(m["skipped"], step)        # raises TrainingStopped after too many non-finite steps in a row
    state = {"collapse": collapse.state_dict(), "skips": skips.state_dict()}   # saved in every checkpoint
    if stop.requested(accelerator): ...     # a SIGINT/SIGTERM arrived on any rank: save, then exit

The loop in train.py calls these once per step; every stop saves a checkpoint first (see `train`).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import torch


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (non-finite steps, collapse); a checkpoint was saved first."""


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the end of the current step and exits."""

    def __init__(self):
        self.signal = None
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def requested(self, accelerator=None) -> bool:
        """Whether any rank got a signal (a collective: every rank stops after the same step)."""
        flag = torch.tensor([1.0 if self.signal is not None else 0.0])
        if accelerator is not None:
            flag = accelerator.reduce(flag.to(accelerator.device), reduction="sum").cpu()
        return bool(flag.item() > 0)

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class SkipGuard:
    """The non-finite policy: a step whose loss or gradient is not finite was skipped (no optimizer, schedule
    or EMA update, see `train.vision_opd_step`); after `max_consecutive` such steps in a row the run stops."""

    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.streak = 0

    def state_dict(self) -> dict:
        """Saved with the trainer state, so a resumed run counts on from where it stopped."""
        return {"streak": self.streak}

    def load_state_dict(self, state: dict) -> None:
        self.streak = int(state["streak"])

    def update(self, skipped: bool, step: int) -> None:
        self.streak = self.streak + 1 if skipped else 0
        if not skipped:
            return
        print(f"[vision-opd] step {step}: non-finite loss or gradient, step skipped ({self.streak} in a row)")
        if self.streak >= self.max_consecutive:
            raise TrainingStopped(f"{self.streak} consecutive non-finite steps (train.max_consecutive_skips): "
                                  "lower optim.lr, check the data, or use float32")


class CollapseWatch:
    """Collapse signals: truncation rate, KL, response length against the first steps' mean (docs/method.md)."""

    def __init__(self, train_cfg):
        self.t = train_cfg
        self.base_len: list[float] = []
        self.streak = 0
        self.stop = False

    def state_dict(self) -> dict:
        """The length baseline and the streak, saved with the trainer state (a resume neither forgets a streak nor
        takes the resumed steps as a new baseline)."""
        return {"base_len": list(self.base_len), "streak": self.streak, "stop": self.stop}

    def load_state_dict(self, state: dict) -> None:
        self.base_len = [float(x) for x in state["base_len"]]
        self.streak, self.stop = int(state["streak"]), bool(state["stop"])

    def update(self, m: dict) -> str:
        if len(self.base_len) < 5:
            self.base_len.append(m["response_len"])
        base = sum(self.base_len) / len(self.base_len)
        flags = []
        if m["truncation_rate"] > self.t.collapse_truncation_rate:
            flags.append(f"truncation_rate {m['truncation_rate']:.2f} > {self.t.collapse_truncation_rate}")
        if m["kl"] > self.t.collapse_kl:
            flags.append(f"kl {m['kl']:.3g} > {self.t.collapse_kl}")
        if len(self.base_len) >= 5 and m["response_len"] > self.t.collapse_length_ratio * base:
            flags.append(f"response_len {m['response_len']:.1f} > {self.t.collapse_length_ratio} x {base:.1f}")
        self.streak = self.streak + 1 if flags else 0
        self.stop = self.streak >= self.t.collapse_patience
        return "; ".join(flags)

    def check(self, flags: str, step: int) -> None:
        """Raise TrainingStopped when the signals persisted `collapse_patience` steps and stop_on_collapse is set."""
        if flags and self.t.stop_on_collapse and self.stop:
            raise TrainingStopped(f"collapse signal at step {step}: {flags} (train.stop_on_collapse)")


def wait_for_signal_test_hook(step: int, stop: StopFlag) -> None:
    """Fault-injection hook for the tests: VISION_OPD_TEST_WAIT_SIGNAL_AT=N waits after step N (logged, not yet
    saved) until a SIGINT/SIGTERM arrives (at most VISION_OPD_TEST_PAUSE_SECONDS), so that a test's signal lands
    mid-run however fast the machine is. Unset: does nothing."""
    if os.environ.get("VISION_OPD_TEST_WAIT_SIGNAL_AT") != str(step):
        return
    t_end = time.time() + float(os.environ.get("VISION_OPD_TEST_PAUSE_SECONDS", "60"))
    while stop.signal is None and time.time() < t_end:
        time.sleep(0.05)
