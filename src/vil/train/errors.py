"""Errors that end a training run, each with a message telling the user what was kept and what to do."""


class TrainingError(RuntimeError):
    """A run stopped; the message says what is saved and how to continue."""


class OutOfMemory(TrainingError):
    """The device could not hold the batch."""


class Diverged(TrainingError):
    """The loss became NaN or infinite."""
