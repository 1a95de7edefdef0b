"""The capstone's training-loop check: the learner's own loop, held to what a loop must do.

`check_training_loop` hands the learner's `training_loop(model, optimizer, next_batch, steps)` a
tiny library `HourglassLM` (fixed seed), AdamW at a fixed learning rate and 20 batches of a
sequence in which each character fixes the next, and watches the run: one batch per step, one
backward pass and one update per step, gradients cleared in between (a tensor hook sees what
`.grad` still holds when the next gradient arrives), and a loss on unseen windows that falls.
The loss alone could not tell a loop that forgets `zero_grad`: Adam divides by the gradients'
running size, so the summed gradients still lower the loss on this sequence.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hourglass_edu.capstone_stages import CheckFailed, _library_model, _run

__all__ = ["check_training_loop"]

LOOP_STEPS, LOOP_LEARNING_RATE = 20, 3e-3


def _rule_windows(seed: int, count: int, batch: int = 8, length: int = 32):
    """`count` batches of windows of a sequence in which each character fixes the next
    ((c + 5) mod 23): a rule a tiny model starts to learn within a few AdamW steps."""
    starts = torch.randint(23, (count, batch, 1), generator=torch.Generator().manual_seed(seed))
    sequences = (starts + 5 * torch.arange(length + 1)) % 23
    return [(windows[:, :-1], windows[:, 1:]) for windows in sequences]


def _cross_entropy(model, x, y) -> float:
    with torch.no_grad():
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()


def _watched_run(training_loop, model, batches) -> dict:
    """Run the learner's loop on `batches`; count what it did: batches taken, backward passes
    (those reaching the head), backward passes that found old gradients, optimizer steps."""
    steps = len(batches)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LOOP_LEARNING_RATE)
    seen = {"batches": 0, "backwards": 0, "leftovers": 0, "updates": 0}

    def next_batch():
        if seen["batches"] == steps:
            raise CheckFailed(f"your loop asked for batch {steps + 1} in a run of {steps} "
                              "steps: one batch per step, `steps` steps")
        seen["batches"] += 1
        return batches[seen["batches"] - 1]

    def on_gradient(parameter):
        # Runs before this backward's gradient is added to parameter.grad: whatever .grad
        # still holds is left over from an earlier backward.
        seen["backwards"] += parameter is model.head.weight     # every step's loss reaches it
        if parameter.grad is not None and parameter.grad.abs().max().item() > 0:
            seen["leftovers"] += 1

    hooks = [p.register_hook(lambda _, p=p: on_gradient(p)) for p in model.parameters()]
    hooks.append(optimizer.register_step_post_hook(
        lambda *_: seen.__setitem__("updates", seen["updates"] + 1)))
    try:
        seen["returned"] = training_loop(model, optimizer, next_batch, steps)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _expect_one_step_each(seen: dict, steps: int, changed: bool) -> None:
    """The likely fix for a loop that skipped or repeated a part of its step."""
    if seen["batches"] < steps:
        raise CheckFailed(f"your loop took {seen['batches']} batches for {steps} steps: call "
                          "next_batch() once in every step, and run `steps` steps")
    if seen["backwards"] == 0:
        raise CheckFailed("no gradient was computed: call loss.backward() in every step")
    if seen["leftovers"]:
        raise CheckFailed("gradients pile up from one step to the next: clear them in every "
                          "step (optimizer.zero_grad()) before loss.backward()")
    if seen["updates"] == 0 or not changed:
        raise CheckFailed("the weights never changed: call optimizer.step() in every step, "
                          "after loss.backward()")
    if seen["updates"] != steps or seen["backwards"] != steps:
        raise CheckFailed(f"{steps} steps ran loss.backward() {seen['backwards']} times and "
                          f"optimizer.step() {seen['updates']} times: once each per step")


def check_training_loop(training_loop) -> bool:
    """`training_loop(model, optimizer, next_batch, steps)`: `steps` training steps, each on one
    batch from `next_batch()`; returns the `steps` losses (floats, nats, each measured before its
    step's update). 20 steps must lower a tiny model's loss on windows it never trained on."""
    steps = LOOP_STEPS
    batches, (held_x, held_y) = _rule_windows(0, steps), _rule_windows(1, 1)[0]
    state = {}

    def runs():
        model = state["model"] = _library_model().train()     # fixed seed, no dropout
        before = [p.detach().clone() for p in model.parameters()]
        state["held_before"] = _cross_entropy(model, held_x, held_y)
        state["first_loss"] = _cross_entropy(model, *batches[0])
        seen = _watched_run(training_loop, model, batches)
        changed = any(not torch.equal(p, old) for p, old in zip(model.parameters(), before,
                                                                 strict=True))
        _expect_one_step_each(seen, steps, changed)
        try:
            state["losses"] = [float(loss) for loss in seen["returned"]]
        except (TypeError, ValueError, RuntimeError):
            raise CheckFailed("return the list of the steps' losses (loss.item() of each step), "
                              f"got {type(seen['returned']).__name__}") from None
        return f"{steps} batches, {steps} updates, gradients cleared between steps"

    def returns_losses():
        losses, expected = state["losses"], state["first_loss"]
        if len(losses) != steps:
            raise CheckFailed(f"returned {len(losses)} losses for {steps} steps: one per step")
        if math.isclose(losses[0] * math.log(2), expected, rel_tol=1e-4):
            raise CheckFailed("the losses are in bits; return them in nats (loss.item()), as "
                              "F.cross_entropy gives them")
        if not math.isclose(losses[0], expected, rel_tol=1e-4, abs_tol=1e-5):
            raise CheckFailed(f"your first loss is {losses[0]:.4f}, but the untrained model's "
                              f"cross-entropy on the first batch is {expected:.4f}: the loss is "
                              "F.cross_entropy of the logits, flattened to (batch * n, vocab), "
                              "against y flattened to (batch * n,)")
        return f"first loss {losses[0]:.3f} nats, the untrained model's on the first batch"

    def loss_falls():
        before, after = state["held_before"], _cross_entropy(state["model"], held_x, held_y)
        if not after < before:
            raise CheckFailed(f"the loss on windows the loop never saw went from {before:.3f} to "
                              f"{after:.3f} nats in {steps} steps: each step should compute the "
                              "loss of its own batch, then zero_grad, backward, step")
        return (f"loss on unseen windows {before:.2f} -> {after:.2f} nats after {steps} steps "
                f"(AdamW, lr {LOOP_LEARNING_RATE:g})")

    return _run("training_loop", [(f"runs {steps} steps", runs),
                                  ("returns each step's loss", returns_losses),
                                  (f"the loss falls in {steps} steps", loss_falls)])
