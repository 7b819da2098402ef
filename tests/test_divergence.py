"""One definition of "diverged" (lambexp.base.divergence), applied by the trainer at the step a
hand-worked loss sequence says, and the post's logging schedule: after batches whose index in the epoch is a
multiple of log_interval, at x = the samples seen before that batch."""

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from lambexp.base.divergence import NONFINITE_LOSS, NONFINITE_PARAMETER, LossWatch, first_divergence
from lambexp.training.divergence import Reading, decide, reason_at, track_first_bad
from lambexp.training.loop import LoopOptions, fit
from lambexp.training.sinks import MemorySink


@pytest.mark.parametrize("losses, expected", [
    ([2.3, 1.2, 2.4], None),  # 1.2 never fell below half of 2.3 (1.15): a rise is not divergence
    ([2.3, 1.1, 2.31], 2),  # fell below 1.15, then rose above 2.3
    ([2.3, 1.1, 2.3], None),  # back to the first value is not above it
    ([2.3, 0.4, 0.6, 1.9, 2.5, 0.1], 4),  # the first loss above 2.3 after the fall
    ([2.3, float("nan")], 1),  # non-finite at once
    ([2.3, 2.2, float("inf")], 2),
    ([], None),
])
def test_the_rule_on_hand_worked_sequences(losses, expected):
    assert first_divergence(losses) == expected


def test_the_watch_is_resumable_from_its_two_numbers():
    whole = LossWatch()
    for loss in (2.0, 0.9):
        assert whole.update(loss) is None
    resumed = LossWatch(whole.first, whole.fell)  # what a checkpoint holds
    assert resumed.update(2.1) is not None and "rose to 2.1" in resumed.update(2.1)


def loss_of(a: float) -> float:
    """NLL of class 0 under logits [a, 0, …, 0]: log(e^a + 9) − a."""
    return math.log(math.exp(a) + 9) - a


class Logits(nn.Module):
    """Ignores its input: every sample gets the logits ``w`` (10,)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(10))

    def forward(self, x):
        return torch.log_softmax(self.w.expand(len(x), 10), dim=1)  # (B, 10)


class Scripted(torch.optim.Optimizer):
    """Sets w[0] to the next value of ``script`` at each step: the loss of step t is loss_of(a_{t-1})."""

    def __init__(self, params, script):
        super().__init__(params, {"lr": 0.0})  # the loop logs the lr
        self.script = iter(script)

    @torch.no_grad()
    def step(self, closure=None):
        self.param_groups[0]["params"][0][0] = next(self.script)


def run(script, *, n, batch, log_interval, epochs, on_divergence="stop"):
    model = Logits()
    x, y = torch.zeros(n, 1), torch.zeros(n, dtype=torch.long)
    sink = MemorySink()
    state = fit(model, Scripted(model.parameters(), script), (x, y), (x, y), epochs=epochs, seed=0,
                options=LoopOptions(batch_size=batch, log_interval=log_interval,
                                    on_divergence=on_divergence), sink=sink)
    return state, sink


# a = 0 (loss 2.303, the first), then 3 (0.370: below half), 2 (0.797), −1 (3.237: above 2.303)
SCRIPT = [3.0, 2.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0]


def test_the_trainer_stops_where_the_rule_says():
    state, sink = run(SCRIPT, n=8, batch=2, log_interval=1, epochs=2)
    logged = [loss for _, loss in sink.series("train/loss")]
    assert logged == pytest.approx([loss_of(0), loss_of(3), loss_of(2), loss_of(-1)])
    assert state.diverged_step == 4 and state.step == 4  # stopped at that step
    assert "rose to 3.237" in state.diverged_reason
    assert first_divergence(logged) == 3  # the report's reading of the same numbers agrees
    assert state.history == []  # a diverged model is never evaluated


def test_continue_trains_on_and_keeps_the_first_divergence():
    state, sink = run(SCRIPT, n=8, batch=2, log_interval=1, epochs=2, on_divergence="continue")
    assert state.step == 8 and state.diverged_step == 4 and len(state.history) == 2
    assert len(sink.series("train/loss")) == 8


def test_logs_at_per_epoch_batch_indices_at_samples_seen_before():
    # 10 samples, batch 4: batches of 4, 4, 2 per epoch; log_interval 2 logs batches 0 and 2 of
    # each epoch, at x = 0, 8 (epoch 1) and 10, 18 (epoch 2)
    script = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]  # a after steps 1..6; step t's loss is loss_of(a_{t-1})
    state, sink = run(script, n=10, batch=4, log_interval=2, epochs=2)
    series = sink.series("train/loss")
    assert [x for x, _ in series] == [0, 8, 10, 18]
    # batch 0 of epoch 1 is step 1 (a = 0), batch 2 is step 3 (a = 1.0), then steps 4 and 6
    assert [v for _, v in series] == pytest.approx([loss_of(0), loss_of(1.0), loss_of(1.5), loss_of(2.5)])
    assert [x for x, _ in sink.series("train/step")] == [0, 8, 10, 18]
    assert [h["samples"] for h in state.history] == [10, 20]  # tests: after each epoch


def rising() -> LossWatch:
    """A watch whose next loss above 2.0 is a divergence by the loss rule."""
    watch = LossWatch()
    for loss in (2.0, 0.9):
        watch.update(loss)
    return watch


@pytest.mark.parametrize("check, watch, expected", [
    (Reading(3.0, 4, False), rising(), (NONFINITE_LOSS, 4)),  # a non-finite loss wins, at its own step
    (Reading(3.0, -1, False), rising(), (NONFINITE_PARAMETER, 7)),  # then a non-finite parameter, now
    (Reading(3.0, -1, True), None, (None, 7)),  # the loss rule only at a log step
])
def test_which_reason_wins(check, watch, expected):
    assert reason_at(check, 7, watch) == expected


def test_the_loss_rule_speaks_when_all_is_finite():
    reason, step = reason_at(Reading(3.0, -1, True), 7, rising())
    assert step == 7 and "rose to 3" in reason


class Record:
    def __init__(self, **fields):
        self.step, self.first_loss, self.loss_fell = 9, 2.0, True
        self.diverged_step, self.diverged_reason = None, None
        self.__dict__.update(fields)


def test_decide_keeps_the_first_divergence_and_feeds_the_rule_only_at_log_steps():
    record = Record(first_loss=None, loss_fell=False)
    assert decide(record, Reading(2.0, -1, True), logged=False) is None and record.first_loss is None
    assert decide(record, Reading(2.0, -1, True), logged=True) is None and record.first_loss == 2.0
    assert decide(record, Reading(2.0, 5, True), logged=True) == NONFINITE_LOSS
    assert decide(record, Reading(2.0, -1, False), logged=True) == NONFINITE_PARAMETER
    assert (record.diverged_step, record.diverged_reason) == (5, NONFINITE_LOSS)


def test_a_check_row_reads_back_as_the_same_check():
    check = Reading(torch.tensor(0.5), torch.tensor(-1), torch.tensor(True))
    assert Reading.from_row(check.row().tolist()) == Reading(0.5, -1, True)
    assert Reading.from_row(check.row().tolist()).finite


def test_the_first_non_finite_step_is_kept_on_the_device():
    first_bad = None
    for step, loss in enumerate([1.0, float("nan"), 1.0, float("inf")], start=1):
        first_bad = track_first_bad(first_bad, torch.tensor(loss), step)
    assert first_bad.item() == 2


def test_the_rule_imports_no_torch():  # the report reads it
    code = "import sys, lambexp.base.divergence; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
